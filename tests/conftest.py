"""Shared fixtures: tiny SAM configurations and a tiny base SAM with real (non-degenerate) weights."""

from __future__ import annotations

import pytest
import torch
from transformers import SamModel

from helpers import save_tiny_base, tiny_base_sam, tiny_batch
from training.sam_init import tiny_sam_config

__all__ = ["save_tiny_base", "write_blob_dataset"]  # imported by tests and benchmarks


@pytest.fixture
def sam_config():
    return tiny_sam_config()


@pytest.fixture
def base_sam(sam_config) -> SamModel:
    """A tiny SamModel with PyTorch-default weights (not the near-zero encoder `SamModel(config)` gives)."""
    return tiny_base_sam(sam_config)


@pytest.fixture
def images() -> torch.Tensor:
    return tiny_batch()[0]


@pytest.fixture
def boxes() -> torch.Tensor:
    return tiny_batch()[1]


@pytest.fixture
def masks() -> torch.Tensor:
    return tiny_batch()[2]


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
