"""Crash safety of training/run.py: complete checkpoints, resume of the right run, guarded output folders, signals,
finished runs, failing figures and non-finite training. Real subprocesses where the point is processes or files."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import RUN_SCRIPT, TIMEOUT, child_env, train_args
from training.arguments import parse_args
from training.checkpointing import (
    MARKER_NAME,
    checkpoint_problem,
    latest_checkpoint,
    read_checkpoint,
    run_fingerprint,
)


def _command(base, data, out, *extra) -> list[str]:
    return [sys.executable, str(RUN_SCRIPT),
            *train_args(base, data, out, "--num_example_figures", "1", "--no_zeroshot_eval", *extra, eval_batch_size=4)]


def _train(base, data, out, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(base, data, out, *extra), env=child_env(), capture_output=True, text=True, timeout=TIMEOUT,
        cwd=out.parent, check=False,
    )


def _logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _assert_same_weights(expected: Path, actual: Path) -> None:
    expected, actual = load_file(expected), load_file(actual)
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-5, atol=1e-6, msg=key)


SIX_STEPS = ("--max_train_steps", "6", "--checkpointing_steps", "2")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_base_dir, blob_dataset_dir) -> Path:
    """A finished 6-step IC-MoE run with checkpoints at steps 2, 4 and 6 (tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = _train(tiny_base_dir, blob_dataset_dir, out, *SIX_STEPS)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture
def run_copy(tmp_path, finished_run) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


# ------------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.slow
def test_checkpoints_are_complete_and_nothing_partial_is_left(finished_run):
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["step_2", "step_4", "step_6"]
    for step in (2, 4, 6):
        folder = finished_run / "checkpoints" / f"step_{step}"
        marker = json.loads((folder / MARKER_NAME).read_text())
        assert marker["step"] == step and marker["fingerprint"]["seed"] == 42
        assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= set(marker["files"])
        assert checkpoint_problem(folder) is None
    assert not list(finished_run.rglob("*.partial"))
    assert (finished_run / "model.safetensors").is_file() and (finished_run / "eval_results.json").is_file()


def _break(folder: Path, how: str) -> None:
    """The partial checkpoints a kill during `save_state` left before saves were renamed into place."""
    if how == "empty":
        shutil.rmtree(folder)
        folder.mkdir()
    elif how == "model only":
        for path in folder.iterdir():
            if path.name != "model.safetensors":
                path.unlink()
    elif how == "zero-byte optimizer":
        (folder / "optimizer.bin").write_bytes(b"")
    elif how == "zero-byte random states, no marker":
        (folder / "random_states_0.pkl").write_bytes(b"")
        (folder / MARKER_NAME).unlink()
    elif how == "missing scheduler":
        (folder / "scheduler.bin").unlink()


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, match",
    [
        ("empty", f"no {MARKER_NAME}.*holds nothing"),
        ("model only", f"no {MARKER_NAME}.*holds model.safetensors$"),
        ("zero-byte optimizer", "optimizer.bin is 0 bytes, the save wrote"),
        ("zero-byte random states, no marker", f"no {MARKER_NAME}"),
        ("missing scheduler", "lacks scheduler.bin"),
    ],
)
def test_incomplete_checkpoint_names_what_is_missing(run_copy, how, match):
    folder = run_copy / "checkpoints" / "step_4"
    _break(folder, how)
    with pytest.raises(ValueError, match=re.escape(str(folder)) + ".*incomplete") as error:
        read_checkpoint(folder)
    assert re.search(match, str(error.value).rstrip(".")), str(error.value)
    newest, skipped = latest_checkpoint(run_copy / "checkpoints")
    assert newest.name == "step_6" and not skipped


@pytest.mark.slow
def test_latest_skips_incomplete_and_foreign_folders_and_resumes_exactly(run_copy, tiny_base_dir, blob_dataset_dir):
    checkpoints = run_copy / "checkpoints"
    expected = run_copy.parent / "expected.safetensors"
    shutil.copy(run_copy / "model.safetensors", expected)
    shutil.copytree(checkpoints / "step_6", checkpoints / "step_20_backup")  # complete, but not named step_<int>
    for step, how in ((8, "empty"), (10, "model only"), (12, "zero-byte optimizer")):
        shutil.copytree(checkpoints / "step_2", checkpoints / f"step_{step}")
        _break(checkpoints / f"step_{step}", how)
    (checkpoints / "step_6" / MARKER_NAME).unlink()  # step_6 was killed before its marker was written
    (checkpoints / "step_14.partial").mkdir()

    result = _train(tiny_base_dir, blob_dataset_dir, run_copy, *SIX_STEPS, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr[-4000:]
    skipped = next(line for line in result.stdout.splitlines() if line.startswith("Skipped incomplete checkpoints"))
    for name in ("step_14.partial", "step_12 (", "step_10 (", "step_8 (", "step_6 ("):
        assert name in skipped, skipped
    assert "step_20_backup" not in skipped
    assert f"Resuming from {checkpoints / 'step_4'}" in result.stdout
    assert _logged_steps(run_copy) == [1, 2, 3, 4, 5, 6]
    _assert_same_weights(expected, run_copy / "model.safetensors")
    assert checkpoint_problem(checkpoints / "step_6") is None  # saved again, complete


@pytest.mark.slow
def test_explicit_incomplete_checkpoint_is_an_error(run_copy, tiny_base_dir, blob_dataset_dir):
    folder = run_copy / "checkpoints" / "step_4"
    (folder / "optimizer.bin").unlink()
    result = _train(tiny_base_dir, blob_dataset_dir, run_copy, *SIX_STEPS, "--resume_from_checkpoint", str(folder))
    assert result.returncode != 0
    assert f"Cannot resume from {folder}: the checkpoint is incomplete. {folder} lacks optimizer.bin" in result.stderr


# ------------------------------------------------------------------------------------------------- fingerprint
BASE_ARGS = ("--base_model", "base", "--dataset", "data")


def _fingerprint(*extra) -> dict:
    args = parse_args([*BASE_ARGS, *extra])
    return run_fingerprint(args, adapter_config={"expert_rank": 16}, train_steps=6, warmup_steps=1, num_processes=1)


@pytest.mark.parametrize(
    "extra",
    [
        ("--output_dir", "elsewhere"), ("--logging_steps", "50"), ("--checkpointing_steps", "7"),
        ("--report_to", "tensorboard"), ("--hub_model_id", "org/name"), ("--hub_token", "hf_secret"),
        ("--eval_steps", "3"), ("--per_device_eval_batch_size", "1"), ("--num_example_figures", "0"),
        ("--resume_from_checkpoint", "latest"),
    ],
)
def test_fingerprint_ignores_where_and_how_often(extra):
    assert _fingerprint(*extra) == _fingerprint()


@pytest.mark.parametrize(
    "extra, field",
    [
        (("--seed", "7"), "seed"), (("--learning_rate", "2e-3"), "learning_rate"), (("--method", "lora"), "method"),
        (("--dataset", "other"), "dataset"), (("--base_model", "other"), "base_model"),
        (("--prompt", "point"), "prompt"), (("--per_device_train_batch_size", "8"), "per_device_train_batch_size"),
    ],
)
def test_fingerprint_holds_what_changes_the_weights(extra, field):
    assert _fingerprint(*extra)[field] != _fingerprint()[field]


@pytest.mark.slow
def test_resuming_another_runs_checkpoint_is_refused(run_copy, tiny_base_dir, blob_dataset_dir):
    before = (run_copy / "model.safetensors").read_bytes()
    result = _train(
        tiny_base_dir, blob_dataset_dir, run_copy, *SIX_STEPS, "--seed", "7", "--expert_rank", "4",
        "--resume_from_checkpoint", "latest",
    )
    assert result.returncode != 0
    assert f"{run_copy / 'checkpoints' / 'step_6'} belongs to another run" in result.stderr
    assert "seed: checkpoint 42, this run 7" in result.stderr
    assert "adapter_config.expert_rank: checkpoint 8, this run 4" in result.stderr
    assert (run_copy / "model.safetensors").read_bytes() == before


# ----------------------------------------------------------------------------------------------- output folder
@pytest.mark.slow
def test_output_dir_of_another_run_is_refused(run_copy, tiny_base_dir, blob_dataset_dir):
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    result = _train(tiny_base_dir, blob_dataset_dir, run_copy, "--max_train_steps", "2")
    assert result.returncode != 0
    assert f"--output_dir {run_copy} holds another run's outputs" in result.stderr
    assert "--overwrite_output_dir" in result.stderr
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_overwrite_output_dir_clears_the_earlier_run(run_copy, tiny_base_dir, blob_dataset_dir):
    (run_copy / "notes.txt").write_text("the user's own file")
    result = _train(
        tiny_base_dir, blob_dataset_dir, run_copy, "--method", "decoder", "--max_train_steps", "2",
        "--overwrite_output_dir",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert not (run_copy / "checkpoints").exists()  # the IC-MoE run's checkpoints cannot be resumed by mistake
    assert not (run_copy / "adapter").exists()  # decoder fine-tuning writes no adapter; the old one is gone
    assert not (run_copy / "layer.py").exists()  # the IC-MoE code files went with the old model
    assert _logged_steps(run_copy) == [1, 2]
    assert json.loads((run_copy / "eval_results.json").read_text())["method"] == "decoder"
    assert (run_copy / "notes.txt").read_text() == "the user's own file"


def test_overwrite_cannot_be_combined_with_resume():
    with pytest.raises(SystemExit):
        parse_args([*BASE_ARGS, "--overwrite_output_dir", "--resume_from_checkpoint", "latest"])


# ------------------------------------------------------------------------------------------------------ signals
def _wait_for(path: Path, process: subprocess.Popen, seconds: float = TIMEOUT) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, f"the run ended (status {process.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_resume_matches(tmp_path, tiny_base_dir, blob_dataset_dir, signum):
    settings = ("--max_train_steps", "24", "--checkpointing_steps", "4")
    out = tmp_path / "interrupted"
    out.mkdir()
    # Output to files, not pipes: a pipe nobody reads while waiting could fill and stall the run.
    with open(tmp_path / "stdout", "w") as stdout_file, open(tmp_path / "stderr", "w") as stderr_file:
        process = subprocess.Popen(
            _command(tiny_base_dir, blob_dataset_dir, out, *settings), env=child_env(), cwd=tmp_path,
            stdout=stdout_file, stderr=stderr_file, text=True,
        )
        try:
            _wait_for(out / "checkpoints" / "step_4" / MARKER_NAME, process)
            process.send_signal(signum)
            process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert process.returncode == 128 + signum, stderr[-4000:]
    stopped = re.search(rf"Stopped by {signum.name} after step (\d+); saved (\S+)\.", stdout)
    assert stopped, stdout[-2000:]
    step = int(stopped.group(1))
    assert 4 <= step < 24
    assert Path(stopped.group(2)) == out / "checkpoints" / f"step_{step}"
    assert latest_checkpoint(out / "checkpoints")[0].name == f"step_{step}"
    assert not (out / "model.safetensors").exists() and not (out / "eval_results.json").exists()
    if signum == signal.SIGINT:
        return  # the same save path as SIGTERM; the resume below is checked once

    resumed = _train(tiny_base_dir, blob_dataset_dir, out, *settings, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert _logged_steps(out) == list(range(1, 25))
    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    reference = _train(tiny_base_dir, blob_dataset_dir, uninterrupted, *settings)
    assert reference.returncode == 0, reference.stderr[-4000:]
    _assert_same_weights(uninterrupted / "model.safetensors", out / "model.safetensors")


# ------------------------------------------------------------------------------------------------ finished runs
@pytest.mark.slow
def test_resuming_a_finished_run_trains_no_extra_step(run_copy, tiny_base_dir, blob_dataset_dir):
    final = load_file(run_copy / "checkpoints" / "step_6" / "model.safetensors")
    result = _train(tiny_base_dir, blob_dataset_dir, run_copy, *SIX_STEPS, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "is the end of training (6 of 6 steps): nothing left to train" in result.stdout
    assert _logged_steps(run_copy) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_copy / "eval_results.json").read_text())["train_steps"] == 6
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["step_2", "step_4", "step_6"]
    saved = load_file(run_copy / "model.safetensors")
    for key, value in final.items():
        assert torch.equal(saved[key], value), key


@pytest.mark.slow
def test_failing_figures_and_card_only_warn(tmp_path, tiny_base_dir, blob_dataset_dir, monkeypatch):
    import hub_cards
    from training import figures
    from training.loop import run

    def no_font(*args, **kwargs):
        raise OSError("cannot open resource: DejaVuSans.ttf")

    def no_card(*args, **kwargs):
        raise RuntimeError("template missing")

    monkeypatch.setattr(figures, "plot_examples", no_font)
    monkeypatch.setattr(hub_cards, "write_model_card", no_card)
    out = tmp_path / "run"
    args = parse_args(_command(tiny_base_dir, blob_dataset_dir, out, "--max_train_steps", "2")[2:])
    with pytest.warns(RuntimeWarning) as warned:
        results = run(args)
    messages = [str(w.message) for w in warned]
    assert any("examples.png failed" in m and "DejaVuSans.ttf" in m for m in messages), messages
    assert any("README.md failed" in m and "template missing" in m for m in messages), messages
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["train_steps"] == 2 and saved["dice"] == results["dice"]
    assert (out / "model.safetensors").is_file() and (out / "figures" / "loss.png").is_file()
    assert not (out / "figures" / "examples.png").exists() and not (out / "README.md").exists()


# ------------------------------------------------------------------------------------------------- non-finite
@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1e-3"])
def test_non_finite_or_non_positive_learning_rate_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        parse_args([*BASE_ARGS, f"--learning_rate={value}"])
    assert f"--learning_rate must be positive and finite, got {float(value)}" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("method, message", [
    ("decoder", r"NonFiniteTrainingError: Step (\d+): the gradient norm is nan"),
    # IC-MoE's contrastive anchors are drawn by the decoder's error, which a diverged decoder makes NaN: the draw
    # counts those pixels as wrong, so the loss is computed and the same check names the step.
    ("icmoe", r"NonFiniteTrainingError: Step (\d+): the gradient norm is nan"),
])
def test_non_finite_training_stops_naming_the_step(tmp_path, tiny_base_dir, blob_dataset_dir, method, message):
    out = tmp_path / "run"
    out.mkdir()
    settings = ("--method", method, "--max_train_steps", "8", "--checkpointing_steps", "1", "--learning_rate", "1e30")
    result = _train(tiny_base_dir, blob_dataset_dir, out, *settings)
    assert result.returncode != 0
    failed_step = int(re.search(message, result.stderr).group(1))
    last_good = out / "checkpoints" / f"step_{failed_step - 1}"
    assert f"The last checkpoint, {last_good}, is as it was." in result.stderr
    assert {p.name for p in (out / "checkpoints").iterdir()} == {f"step_{s}" for s in range(1, failed_step)}
    assert checkpoint_problem(last_good) is None
    assert all(torch.isfinite(t).all() for t in load_file(last_good / "model.safetensors").values())
    assert not (out / "model.safetensors").exists() and not (out / "eval_results.json").exists()


def test_non_finite_parameters_are_never_saved(tmp_path):
    from accelerate import Accelerator

    from training.loop import NonFiniteTrainingError, _check_finite_parameters

    model = torch.nn.Linear(2, 2)
    _check_finite_parameters(model, Accelerator(cpu=True), 5, None, 1e-3)  # finite: passes
    with torch.no_grad():
        model.bias[0] = float("nan")
    last = tmp_path / "checkpoints" / "step_4"
    with pytest.raises(NonFiniteTrainingError, match=r"Step 5: 1 trained tensors hold NaN or inf values \(first: bias\)"):
        _check_finite_parameters(model, Accelerator(cpu=True), 5, last, 1e-3)
