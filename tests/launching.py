"""Launching `training/run.py` as users do (`accelerate launch` in a subprocess, a clean environment, one thread
per process) and reading back what the run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configuration" / "accelerate"
TIMEOUT = 600


def env() -> dict:
    """This environment without what a launcher sets, so that every launch starts its own world."""
    variables = {k: v for k, v in os.environ.items()
                 if not k.startswith(("ACCELERATE_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_", "FSDP_"))}
    variables["OMP_NUM_THREADS"] = "1"
    return variables


def train_args(base, data, out, *extra) -> list[str]:
    return [
        "--base_model", str(base), "--dataset", str(data), "--output_dir", str(out),
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3", "--dataloader_num_workers", "0",
        "--logging_steps", "1", *extra,
    ]


def launch(launch_args, train_args, cwd, *, check=True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, str(REPO / "training" / "run.py"),
               *train_args]
    result = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def results(out: Path) -> dict:
    return json.loads((out / "eval_results.json").read_text())


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
