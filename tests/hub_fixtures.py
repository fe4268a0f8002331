"""Builders shared by the Hub tests: a tiny SAM processor, a briefly trained tiny IC-MoE model, and a training output
folder laid out as `training/run.py` writes it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import SamImageProcessor, SamModel, SamProcessor

from modeling_icmoe import (
    IcMoeAdapterConfig,
    IcMoeSamModel,
    get_icmoe_model,
    save_icmoe_adapter,
    save_pretrained_with_pipeline,
)
from training.sam_init import init_sam_from_scratch, tiny_sam_config

IMAGE_SIZE = 64
BASE_REPO = "org/sam-base"
EVAL_RESULTS = {
    "method": "icmoe",
    "base_model": BASE_REPO,
    "dataset": "org/tiny-polyps",
    "eval_split": "test",
    "n_images": 4,
    "dice": 0.8125,
    "dice_std": 0.05,
    "iou": 0.6875,
    "iou_std": 0.0625,
    "hd95": 3.5,
    "hd95_std": 1.25,
    "train_steps": 2,
    "trainable_params": 12345,
    "train_seconds": 1.5,
    "comparisons": {"zeroshot": {"dice": 0.25, "iou": 0.125, "hd95": 20.0, "n_images": 4}},
}


def tiny_sam_processor() -> SamProcessor:
    """SAM's processor with the tiny model's 64-pixel input size."""
    image_processor = SamImageProcessor(
        size={"longest_edge": IMAGE_SIZE}, pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return SamProcessor(image_processor=image_processor)


def tiny_base_sam() -> SamModel:
    return init_sam_from_scratch(SamModel(tiny_sam_config()), seed=0).eval()


def trained_icmoe(base: SamModel, steps: int = 2) -> IcMoeSamModel:
    """A tiny IC-MoE model after a few steps, so its adapters are no longer the zero-output initialisation."""
    adapter_config = IcMoeAdapterConfig(expert_rank=4, projection_dim=8, base_model_name_or_path=BASE_REPO)
    model = get_icmoe_model(base, adapter_config).train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    boxes = torch.tensor([[[4.0, 6.0, 40.0, 44.0]], [[10.0, 12.0, 56.0, 60.0]]])
    labels = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE)
    labels[0, 6:44, 4:40] = 1
    labels[1, 12:60, 10:56] = 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(pixel_values=images, input_boxes=boxes, labels=labels).loss.backward()
        optimizer.step()
    return model.eval()


def write_output_dir(
    output_dir: Path, model: IcMoeSamModel, processor: SamProcessor, eval_results: dict | None = None
) -> Path:
    """A training output folder: checkpoint with pipeline, adapter, eval results, log, a figure and Accelerate state."""
    save_pretrained_with_pipeline(model, processor, output_dir)
    save_icmoe_adapter(model, output_dir / "adapter")
    (output_dir / "eval_results.json").write_text(json.dumps(eval_results or EVAL_RESULTS, indent=2))
    (output_dir / "train_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n')
    (output_dir / "figures").mkdir(exist_ok=True)
    PIL.Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(output_dir / "figures" / "expert_load.png")
    (output_dir / "checkpoints" / "checkpoint_2").mkdir(parents=True, exist_ok=True)
    (output_dir / "checkpoints" / "checkpoint_2" / "optimizer.bin").write_bytes(b"\0" * 64)
    return output_dir


def sample_image(height: int = 48, width: int = 56, seed: int = 0) -> np.ndarray:
    """A 16-bit grayscale image with a bright rectangle: the kind of input the pipeline must normalise."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 800, size=(height, width)).astype(np.uint16)
    image[10:30, 12:40] += 3000
    return image
