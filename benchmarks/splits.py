"""The benchmarks' tasks and data splits: the tasks files, a task's fingerprint, the grouped validation split carved
from a train split, and a task's fresh test set (`benchmarks/tasks/fresh_test/`). The test split is never read
before every choice is made."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 0  # the split's seed, independent of the training seeds


def portable(path: str | Path) -> str:
    """A path relative to the repository when inside it, so that settings compare across checkouts."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def load_tasks(names: list[str] | None, tasks_file: Path, fallback: list[dict] | None = None) -> list[dict]:
    tasks = json.loads(tasks_file.read_text()) if tasks_file.is_file() or fallback is None else fallback
    by_name = {task["name"]: task for task in tasks}
    if names is None:
        return tasks
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"Unknown task(s) {missing}; {tasks_file.name} has {sorted(by_name)}.")
    return [by_name[name] for name in names]


def task_fingerprint(task: dict) -> str:
    """Content hash of the task's row list, so that a regenerated task is not mistaken for the recorded one."""
    metadata = REPO_ROOT / task["path"] / "metadata.csv"
    return hashlib.sha256(metadata.read_bytes()).hexdigest()[:12]


def own_splits(task: dict) -> set[str]:
    """The splits the task's `metadata.csv` names (a row without a split is `train`, as `training/data.py` reads it)."""
    with open(REPO_ROOT / task["path"] / "metadata.csv", newline="", encoding="utf-8") as f:
        return {row.get("split") or "train" for row in csv.DictReader(f)}


def grouped_validation_split(groups: list[str], *, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) row indices with about `fraction` of the rows in validation and every group (image)
    wholly on one side. Depends only on the multiset of groups and the seed, not on the row order."""
    sizes = Counter(groups)
    if len(sizes) < 2:
        raise ValueError(f"A grouped validation split needs at least two images, got {len(sizes)}.")
    unique = sorted(sizes)
    target = fraction * len(groups)
    held_out, count = set(), 0
    for index in np.random.default_rng(seed).permutation(len(unique)):
        if count >= target:
            break
        group = unique[index]
        # Whole groups only: skip one that would overshoot the target by more than it is now undershot.
        if abs(count + sizes[group] - target) < abs(count - target):
            held_out.add(group)
            count += sizes[group]
    if not held_out:  # every group is over twice the target
        held_out = {min(unique, key=lambda group: (sizes[group], group))}
    if len(held_out) == len(unique):
        held_out.discard(unique[-1])
    validation = [i for i, group in enumerate(groups) if group in held_out]
    train = [i for i, group in enumerate(groups) if group not in held_out]
    return train, validation


def save_dataset_dict(splits, folder: Path) -> None:
    """`save_to_disk` through a partial folder renamed at the end: a cache folder is whole or absent."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    splits.save_to_disk(str(partial))  # embeds the image bytes: the folder stands alone
    partial.rename(folder)


def validation_dataset(task: dict, cache_dir: Path) -> tuple[Path, str]:
    """The task's train split cut into `train` and `validation`, as a `save_to_disk` folder (cached), and an id of
    the held-out rows (part of the selection runs' settings: a changed split reruns them)."""
    import datasets

    from training.data import load_raw_dataset

    task_dir = REPO_ROOT / task["path"]
    train = load_raw_dataset(str(task_dir), image_column="image", mask_column="mask")["train"]
    files = train.cast_column("image", datasets.Image(decode=False))["image"]
    groups = [os.path.relpath(f["path"], task_dir) if f["path"] else hashlib.sha1(f["bytes"]).hexdigest()
              for f in files]
    train_rows, validation_rows = grouped_validation_split(groups, fraction=VALIDATION_FRACTION, seed=VALIDATION_SEED)
    split_id = hashlib.sha256(json.dumps([task_fingerprint(task), validation_rows]).encode()).hexdigest()[:12]
    folder = cache_dir / f"{task['name']}-{split_id}"
    if not (folder / "dataset_dict.json").is_file():
        save_dataset_dict(datasets.DatasetDict({"train": train.select(train_rows),
                                                "validation": train.select(validation_rows)}), folder)
    return folder, split_id


FRESH_TEST_DIR = REPO_ROOT / "benchmarks" / "tasks" / "fresh_test"


def fresh_test_folder(task: dict) -> Path:
    """The task's fresh test set (`benchmarks/tasks/fresh_test/<task>/`, made by `make_simulated_tasks.py
    --fresh_test_seed`); refused by name where the task has none."""
    folder = FRESH_TEST_DIR / task["name"]
    if not (folder / "metadata.csv").is_file():
        raise SystemExit(f"--test_set fresh: task {task['name']} has no fresh test set ({portable(folder)} is missing); "
                         "a real dataset cannot be drawn again, so it is scored on its own test split only")
    return folder


def fresh_test_dataset(task: dict, cache_dir: Path) -> tuple[Path, str]:
    """The task's train split and its fresh test set, as a `save_to_disk` folder (cached), and an id of the two."""
    import datasets

    from training.data import load_raw_dataset

    fresh = fresh_test_folder(task)
    fresh_id = hashlib.sha256((fresh / "metadata.csv").read_bytes()).hexdigest()[:12]
    split_id = f"{task_fingerprint(task)}-{fresh_id}"
    folder = cache_dir / f"{task['name']}-fresh-{split_id}"
    if not (folder / "dataset_dict.json").is_file():
        train = load_raw_dataset(str(REPO_ROOT / task["path"]), image_column="image", mask_column="mask")["train"]
        test = load_raw_dataset(str(fresh), image_column="image", mask_column="mask")["test"]
        save_dataset_dict(datasets.DatasetDict({"train": train, "test": test}), folder)
    return folder, split_id


@dataclass(frozen=True)
class SelectionSplit:
    """Where the learning-rate selection runs train (`train` of `dataset`) and are scored (its `validation`)."""

    dataset: Path
    split_id: str  # part of the selection runs' settings: a changed split reruns them
    description: str


def selection_split(task: dict, cache_dir: Path) -> SelectionSplit:
    """The task's own validation split when its folder has one, else one carved from its train split."""
    if "validation" in own_splits(task):
        return SelectionSplit(REPO_ROOT / task["path"], task_fingerprint(task), "train -> validation")
    folder, split_id = validation_dataset(task, cache_dir)
    return SelectionSplit(folder, split_id, "train[grouped, without validation] -> validation")
