"""Shared fixtures: tiny SAM configurations and a tiny base SAM with real (non-degenerate) weights."""

from __future__ import annotations

import pytest
import torch
from transformers import SamModel

from training.sam_init import init_sam_from_scratch, tiny_sam_config


@pytest.fixture
def sam_config():
    return tiny_sam_config()


@pytest.fixture
def base_sam(sam_config) -> SamModel:
    """A tiny SamModel with PyTorch-default weights (not the near-zero encoder `SamModel(config)` gives)."""
    return init_sam_from_scratch(SamModel(sam_config), seed=0).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def boxes() -> torch.Tensor:
    return torch.tensor([[[4.0, 6.0, 40.0, 44.0]], [[10.0, 12.0, 56.0, 60.0]]])


@pytest.fixture
def masks() -> torch.Tensor:
    labels = torch.zeros(2, 64, 64)
    labels[0, 6:44, 4:40] = 1
    labels[1, 12:60, 10:56] = 1
    return labels


def save_tiny_base(folder, seed: int = 0):
    """A tiny SamModel with real weights and a matching processor, saved like a Hub checkpoint."""
    from transformers import SamImageProcessor, SamProcessor

    config = tiny_sam_config()
    model = init_sam_from_scratch(SamModel(config), seed=seed)
    model.save_pretrained(folder)
    size = config.vision_config.image_size
    low_res = 4 * size // config.vision_config.patch_size
    processor = SamProcessor(
        SamImageProcessor(
            size={"longest_edge": size},
            pad_size={"height": size, "width": size},
            mask_size={"longest_edge": low_res},
            mask_pad_size={"height": low_res, "width": low_res},
        )
    )
    processor.save_pretrained(folder)
    return folder


def write_blob_dataset(folder, *, count: int = 12, size: tuple[int, int] = (48, 40), seed: int = 0):
    """A folder dataset (images/, masks/, metadata.csv with a split column) of bright ellipses on noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows = ["file_name,mask_file_name,split"]
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(count):
        cy, cx = rng.uniform(12, size[0] - 12), rng.uniform(12, size[1] - 12)
        ry, rx = rng.uniform(5, 10, size=2)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image = (rng.normal(80, 20, size) + 100 * mask).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "masks" / f"{i}.png")
        rows.append(f"images/{i}.png,masks/{i}.png,{'train' if i < count * 2 // 3 else 'test'}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("tiny-sam"))


@pytest.fixture(scope="session")
def blob_dataset_dir(tmp_path_factory):
    return write_blob_dataset(tmp_path_factory.mktemp("blobs") / "data")
