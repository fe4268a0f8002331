"""Crash-safe checkpoints, run fingerprints, guarded output folders and signal handling for `training/loop.py`.

A checkpoint is written by `accelerator.save_state` into `checkpoints/step_N.partial/`; its files are flushed to
disk, the marker `icmoe_checkpoint.json` (step, run fingerprint, zero-shot comparison, every file's size) is written
last, and the folder is renamed to `checkpoints/step_N/`. A kill at any moment therefore leaves the earlier
checkpoints as they were and at most a `.partial` folder, which nothing resumes from. The final model is saved the
same way (into `final.partial/`, then moved into the output folder) before `eval_results.json` is written, so an
`eval_results.json` always sits beside a complete model.

The fingerprint holds what decides the trained weights (method, base, data, adapter config, optimisation settings,
seed, process count); a checkpoint is only resumed by a run with the same fingerprint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path

from modeling_icmoe import run_folder
from .methods import BaselineOptions

CHECKPOINT_NAME = re.compile(r"step_(\d+)")  # exactly `step_<int>`; anything else (`step_20_backup`) is not ours
MARKER_NAME = "icmoe_checkpoint.json"
PARTIAL_SUFFIX = ".partial"
FINAL_PARTIAL = "final" + PARTIAL_SUFFIX
__getattr__ = run_folder.moved_names(__name__, {"RUN_MANIFEST": "RUN_MANIFEST", "TRACKER_PROJECT": "TRACKER_PROJECT"})

# Arguments that change the trained weights or the results stored with them. Not here: where outputs go, logging,
# evaluation cadence and batch size, figures, Hub settings, checkpoint frequency and resuming itself.
FINGERPRINT_ARGS = (
    "method", "base_model", "dataset", "image_column", "mask_column", "train_split", "eval_split",
    "validation_fraction", "label_ids", "max_train_samples", "max_eval_samples", "per_device_train_batch_size",
    "gradient_accumulation_steps", "learning_rate", "weight_decay", "max_grad_norm", "lr_scheduler_type", "seed",
    "mixed_precision", "prompt", "num_points", "box_jitter", "slice_axis", "window",
)
# What a run writes at the top of its output folder besides the model's own files (listed in the run manifest).
RUN_OUTPUTS = (
    run_folder.CHECKPOINTS_SUBFOLDER, run_folder.ADAPTER_SUBFOLDER, run_folder.FIGURES_SUBFOLDER,
    run_folder.TRAIN_LOG_NAME, run_folder.EVAL_RESULTS_NAME, run_folder.CARD_NAME, run_folder.RUN_MANIFEST,
    run_folder.TRACKER_PROJECT, FINAL_PARTIAL, "config.json", "model.safetensors", "model.safetensors.index.json",
    "processor_config.json", "preprocessor_config.json",
)
# Any of these in an output folder means another run wrote there.
RUN_SIGNS = (
    run_folder.CHECKPOINTS_SUBFOLDER, run_folder.EVAL_RESULTS_NAME, run_folder.TRAIN_LOG_NAME, "model.safetensors",
    run_folder.ADAPTER_SUBFOLDER, run_folder.RUN_MANIFEST,
)


def _local_or_id(value: str) -> str:
    """Local folders by their resolved path (so `./data` and `/abs/data` agree), Hub ids as they are."""
    return str(Path(value).resolve()) if Path(value).exists() else value


def run_fingerprint(args, *, adapter_config: dict | None, train_steps: int, warmup_steps: int, num_processes: int) -> dict:
    """The settings a resumed run must share with the run that wrote the checkpoint (JSON-ready)."""
    fingerprint = {name: getattr(args, name) for name in FINGERPRINT_ARGS}
    fingerprint["base_model"] = _local_or_id(args.base_model)
    fingerprint["dataset"] = _local_or_id(args.dataset)
    fingerprint.update(train_steps=train_steps, warmup_steps=warmup_steps, num_processes=num_processes)
    if args.method == "icmoe":
        fingerprint["adapter_config"] = adapter_config
    elif args.method in ("lora", "adapter"):
        fingerprint[f"{args.method}_rank"] = getattr(args, f"{args.method}_rank")
        # Only what differs from the defaults, so that checkpoints written before these options resume.
        fingerprint.update({name: value for name, value in BaselineOptions.from_args(args).changed().items()
                            if name.startswith(args.method)})
    if getattr(args, "layer_lr_decay", 1.0) != 1.0:
        fingerprint["layer_lr_decay"] = args.layer_lr_decay
    return json.loads(json.dumps(fingerprint))  # tuples become lists, as they will be when read back


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """`name: checkpoint X, this run Y` for every setting that differs (nested adapter-config fields by name)."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += [f"{key}.{line}" for line in fingerprint_differences(old, new)]
        elif old != new:
            differences.append(f"{key}: checkpoint {old!r}, this run {new!r}")
    return differences


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is one."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    marker = folder / MARKER_NAME
    if not marker.is_file():
        present = sorted(p.name for p in folder.iterdir()) or ["nothing"]
        return (
            f"{folder} has no {MARKER_NAME} (written last by a complete save), so the save did not finish; "
            f"it holds {', '.join(present)}"
        )
    try:
        sizes = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as error:
        return f"{marker} is unreadable ({error})"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"{folder} lacks {name}"
        if path.stat().st_size != size:
            return f"{path} is {path.stat().st_size} bytes, the save wrote {size}"
    return None


def read_checkpoint(folder: Path) -> dict:
    """The marker of a complete checkpoint; a ValueError naming what is missing otherwise."""
    problem = checkpoint_problem(folder)
    if problem:
        raise ValueError(f"Cannot resume from {folder}: the checkpoint is incomplete. {problem}.")
    return json.loads((folder / MARKER_NAME).read_text())


def latest_checkpoint(checkpoints_dir: Path) -> tuple[Path, list[str]]:
    """The newest complete `step_N` folder, and a line for every newer or unfinished one it passed over."""
    found = []
    if checkpoints_dir.is_dir():
        for path in checkpoints_dir.iterdir():
            match = CHECKPOINT_NAME.fullmatch(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    skipped = [f"{p.name} (a save that did not finish)" for p in sorted(checkpoints_dir.glob(f"*{PARTIAL_SUFFIX}"))]
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append(f"{path.name} ({problem})")
    raise ValueError(
        f"--resume_from_checkpoint latest: no complete checkpoint in {checkpoints_dir}"
        + (f"; skipped: {'; '.join(skipped)}" if skipped else "")
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: dict) -> None:
    """Writes `path` through a temporary sibling and a rename, so readers see the old file or the whole new one."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    _fsync(partial)
    os.replace(partial, path)


def replace_path(source: Path, target: Path) -> None:
    """Moves `source` to `target`, replacing what is there; a folder is swapped with two renames."""
    if target.is_dir() and not target.is_symlink():
        stale = target.with_name(target.name + ".old" + PARTIAL_SUFFIX)
        shutil.rmtree(stale, ignore_errors=True)
        os.rename(target, stale)
        os.rename(source, target)
        shutil.rmtree(stale)
    else:
        os.replace(source, target)


def save_checkpoint(
    accelerator, output_dir: Path, step: int, *, fingerprint: dict, comparisons: dict,
    stream_positions: list | None = None,
) -> Path:
    """`accelerator.save_state` into `step_N.partial/`, marker last, then a rename to `step_N/` (on every process).

    `stream_positions`: each process's (pass, batches read) in a streamed training split, kept in the marker."""
    folder = output_dir / run_folder.CHECKPOINTS_SUBFOLDER / f"step_{step}"
    partial = folder.with_name(folder.name + PARTIAL_SUFFIX)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a save that was killed
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process's random states are written
    if accelerator.is_main_process:
        files = {}
        for path in sorted(p for p in partial.rglob("*") if p.is_file()):
            _fsync(path)
            files[str(path.relative_to(partial))] = path.stat().st_size
        marker = {"step": step, "fingerprint": fingerprint, "comparisons": comparisons, "files": files,
                  **({"stream_positions": stream_positions} if stream_positions is not None else {})}
        write_json_atomic(partial / MARKER_NAME, marker)
        replace_path(partial, folder)
    accelerator.wait_for_everyone()
    return folder


def publish_outputs(partial: Path, output_dir: Path) -> list[str]:
    """Moves everything in `partial` (a finished save) into `output_dir`, replacing older copies; returns the names."""
    names = sorted(p.name for p in partial.iterdir())
    for name in names:
        replace_path(partial / name, output_dir / name)
    partial.rmdir()
    return names


# ---------------------------------------------------------------------------------------------- output folder
def check_output_dir(output_dir: Path, *, overwrite: bool, resuming: bool) -> list[str]:
    """Refuses a folder that holds another run's outputs unless `overwrite` or `resuming`; returns what to clear.

    The names returned are what the earlier run wrote at the top of the folder (see `clear_outputs`); files of the
    user's own beside them are kept.
    """
    if not output_dir.exists():
        return []
    if not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} exists and is not a folder.")
    found = [name for name in RUN_SIGNS if (output_dir / name).exists()]
    if not found or resuming:
        return []
    if not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} holds another run's outputs ({', '.join(found)}). Pass "
            "--overwrite_output_dir to replace them, --resume_from_checkpoint latest to continue that run, or "
            "choose another --output_dir."
        )
    names = set(RUN_OUTPUTS) | {p.name for p in output_dir.glob(f"*{PARTIAL_SUFFIX}")}
    manifest = output_dir / run_folder.RUN_MANIFEST
    if manifest.is_file():
        # Plain names only: a manifest naming `../x` must not reach outside the folder.
        names |= {name for name in json.loads(manifest.read_text()).get("outputs", []) if name == Path(name).name}
    names -= {"", ".", ".."}
    return sorted(name for name in names if (output_dir / name).exists() or (output_dir / name).is_symlink())


def clear_outputs(output_dir: Path, names: list[str]) -> None:
    """Removes the earlier run's outputs that `check_output_dir` listed."""
    for name in names:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# ------------------------------------------------------------------------------------------------------ signals
class StopOnSignal:
    """Turns SIGTERM and SIGINT into a request to stop at the next step boundary (`signum` is then set).

    Cluster schedulers send SIGTERM some time before they kill a job; that is the time to save a checkpoint. A
    second signal stops at once, as Ctrl-C twice should. Outside the main thread, signals cannot be caught: no-op.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            self._restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signum = signum

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
