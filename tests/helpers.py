"""What the tests share: a tiny SAM base and its processor, a briefly trained IC-MoE model, the arguments of a short
`training/run.py` run, the environment of a child process, and launching `training/run.py` as users do
(`accelerate launch` in a subprocess) and reading back what the run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamModel, get_icmoe_model
from training.sam_init import init_sam_from_scratch, tiny_sam_config

REPO = Path(__file__).resolve().parents[1]
RUN_SCRIPT = REPO / "training" / "run.py"
CONFIGS = REPO / "configuration" / "accelerate"
TIMEOUT = 600
# What `accelerate launch`, torchrun and FSDP set for their processes: a child that inherited them would join this
# process's world instead of starting its own.
LAUNCHER_VARIABLES = ("ACCELERATE_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_", "FSDP_")


# ------------------------------------------------------------------------------------------------ tiny models
def tiny_base_sam(config: SamConfig | None = None, seed: int = 0) -> SamModel:
    """A tiny SamModel (`tiny_sam_config()` unless `config` is given) with PyTorch-default weights, not the near-zero
    encoder `SamModel(config)` gives; in eval mode."""
    return init_sam_from_scratch(SamModel(config or tiny_sam_config()), seed=seed).eval()


def tiny_sam_processor(config: SamConfig | None = None) -> SamProcessor:
    """SAM's processor at the tiny model's sizes: its input size, and labels at the size of its low-resolution masks."""
    vision = (config or tiny_sam_config()).vision_config
    size = vision.image_size
    low_res = 4 * size // vision.patch_size
    return SamProcessor(
        SamImageProcessor(
            size={"longest_edge": size},
            pad_size={"height": size, "width": size},
            mask_size={"longest_edge": low_res},
            mask_pad_size={"height": low_res, "width": low_res},
        )
    )


def save_tiny_base(folder, seed: int = 0):
    """The tiny base and its processor, saved like a Hub checkpoint."""
    tiny_base_sam(seed=seed).save_pretrained(folder)
    tiny_sam_processor().save_pretrained(folder)
    return folder


def tiny_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two 64 x 64 noise images, one box on each, and the boxes' filled masks as labels."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))  # (B, 3, H, W)
    boxes = torch.tensor([[[4.0, 6.0, 40.0, 44.0]], [[10.0, 12.0, 56.0, 60.0]]])  # (B, 1, 4) as x0, y0, x1, y1
    labels = torch.zeros(2, 64, 64)  # (B, H, W)
    labels[0, 6:44, 4:40] = 1
    labels[1, 12:60, 10:56] = 1
    return images, boxes, labels


def train_steps(model, images, boxes, labels, *, steps: int, **optimizer_kwargs):
    """`steps` AdamW steps (learning rate 1e-2) of `model` on one batch; returns it in eval mode."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, **optimizer_kwargs)
    for _ in range(steps):
        optimizer.zero_grad()
        model(pixel_values=images, input_boxes=boxes, labels=labels).loss.backward()
        optimizer.step()
    return model.eval()


def trained_icmoe(base: SamModel, steps: int = 2, **adapter_fields) -> IcMoeSamModel:
    """A tiny IC-MoE model after a few steps, so its adapters are no longer the zero-output initialisation."""
    adapter_config = IcMoeAdapterConfig(expert_rank=4, projection_dim=8, **adapter_fields)
    return train_steps(get_icmoe_model(base, adapter_config), *tiny_batch(seed=0), steps=steps)


# ------------------------------------------------------------------------------------------ training/run.py
def train_args(base, data, out, *extra, eval_batch_size: int = 3) -> list[str]:
    """A short run's arguments: batches of two, no loader workers, a log record every step; `extra` come last."""
    return [
        "--base_model", str(base), "--dataset", str(data), "--output_dir", str(out),
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", str(eval_batch_size),
        "--dataloader_num_workers", "0", "--logging_steps", "1", *extra,
    ]


def child_env(**variables: str) -> dict[str, str]:
    """A child process's environment: this one without what a launcher sets, so that every launch starts its own
    world; one thread per process; offline. `variables` add to it."""
    kept = {key: value for key, value in os.environ.items() if not key.startswith(LAUNCHER_VARIABLES)}
    return {**kept, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **variables}


def launch(launch_args, train_args, cwd, *, check=True) -> subprocess.CompletedProcess:
    """`accelerate launch [launch_args] training/run.py [train_args]` in `cwd`."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, str(RUN_SCRIPT), *train_args]
    result = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def results(out: Path) -> dict:
    return json.loads((out / "eval_results.json").read_text())


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ benchmarks
def smoke_args(folder: Path, output: str) -> list[str]:
    """A benchmark's `--smoke` arguments, writing its work, its results file `output` and its report into `folder`."""
    return ["--smoke", "--work_dir", str(folder / "work"), "--output", str(folder / output),
            "--report_path", str(folder / "BENCHMARKS.md")]


def smoke_twice(script: Path, main, folder: Path, output: str) -> tuple[Path, dict, dict]:
    """A benchmark's smoke run through its command line, then the same arguments again in-process with `main` (which
    must resume): the folder, and the results file after each run."""
    args = smoke_args(folder, output)
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=TIMEOUT,
                            cwd=REPO, env=child_env())
    assert result.returncode == 0, result.stderr[-4000:]
    first = json.loads((folder / output).read_text())
    main(args)
    return folder, first, json.loads((folder / output).read_text())
