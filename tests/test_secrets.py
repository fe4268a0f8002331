"""Secrets stay secret: a Hub token given on the command line reaches no file a training run writes, no tracker and
no console output (a real `training/run.py` subprocess with a TensorBoard tracker)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import RUN_SCRIPT, child_env, train_args
from training.arguments import SECRET_ARGUMENTS, parse_args, tracker_config

FAKE_TOKEN = "hf_FakeSecretTokenThatMustNeverBeWritten0123"


def test_tracker_config_leaves_out_the_token():
    args = parse_args(["--hub_token", FAKE_TOKEN, "--max_train_steps", "3"])
    config = tracker_config(args)
    assert "hub_token" in SECRET_ARGUMENTS and "hub_token" not in config
    assert FAKE_TOKEN not in repr(config) and config["max_train_steps"] == 3


@pytest.mark.slow
def test_no_file_or_output_of_a_run_holds_the_token(tmp_path, tiny_base_dir, blob_dataset_dir):
    out = tmp_path / "run"
    command = [
        sys.executable, str(RUN_SCRIPT),
        *train_args(tiny_base_dir, blob_dataset_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "1",
                    "--num_example_figures", "1", "--report_to", "tensorboard", "--push_to_hub", "--dry_run",
                    "--hub_model_id", "org/icmoe-sam", "--hub_token", FAKE_TOKEN, eval_batch_size=8),
    ]
    result = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    written = [path for path in out.rglob("*") if path.is_file()]
    # The run wrote what is searched: the tracker's event and hparams files, checkpoints, the model, the card.
    names = {path.name for path in written}
    assert any(name.startswith("events.out.tfevents") for name in names), sorted(names)
    assert {"eval_results.json", "README.md", "model.safetensors", "train_log.jsonl"} <= names
    assert any(path.parent.parent.name == "checkpoints" for path in written)
    leaks = [str(path.relative_to(out)) for path in written if FAKE_TOKEN.encode() in path.read_bytes()]
    assert leaks == []
    assert FAKE_TOKEN not in result.stdout and FAKE_TOKEN not in result.stderr
