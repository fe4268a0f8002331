"""Builders shared by the Hub tests: the results of a run, a training output folder laid out as `training/run.py`
writes it, and a sample image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
from transformers import SamProcessor

from modeling_icmoe import IcMoeSamModel, save_icmoe_adapter, save_pretrained_with_pipeline

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
