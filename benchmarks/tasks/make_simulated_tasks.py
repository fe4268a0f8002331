# Builds the simulated segmentation tasks of the accuracy benchmark, offline and deterministic from one seed:
#
#   mr_brain_lesion  T2-weighted spin-echo MR brain slices with one low-contrast lesion (simulate_mr.py)
#   us_lesion        B-mode ultrasound frames with one hypoechoic lesion in speckle (simulate_us.py)
#
# Each task is a folder in the format `training/data.py` reads: `metadata.csv` (file_name,mask_file_name,split),
# 8-bit grayscale PNG images and {0,255} PNG masks with exactly one connected target each. Every sample is checked
# before anything is written; only `images/`, `masks/` and `metadata.csv` are replaced, the hand-written README.md
# beside them stays. numpy, scipy and pillow only; CPU, about three minutes for both tasks.
#
#   python benchmarks/tasks/make_simulated_tasks.py --task all --overwrite
#
# `--fresh_test_seed S` builds only a new test set of each task, NUM_TEST samples drawn from the same generators with
# the seed S, into `benchmarks/tasks/fresh_test/<task>/` (split `test` only): the test set that no choice of the
# benchmark has seen, scored once after every choice is frozen (`benchmarks/accuracy.py --test_set fresh`).
#
#   python benchmarks/tasks/make_simulated_tasks.py --task all --fresh_test_seed 20261205

from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from simulate_mr import simulate_mr_brain_lesion
from simulate_us import simulate_us_lesion

Simulator = Callable[..., tuple[np.ndarray, np.ndarray]]
SIMULATORS: dict[str, Simulator] = {"mr_brain_lesion": simulate_mr_brain_lesion, "us_lesion": simulate_us_lesion}
GENERATED = ("images", "masks", "metadata.csv")
TASKS_DIR = Path(__file__).resolve().parents[2] / "training" / "data"  # beside the embedded nuclei
FRESH_TEST_DIR = Path(__file__).resolve().parent / "fresh_test"
DEFAULT_SEED = 20240
IMAGE_SIZE = 128
NUM_TRAIN, NUM_TEST = 200, 100


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the simulated benchmark tasks (MR brain lesion, US lesion).")
    parser.add_argument("--task", choices=[*SIMULATORS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="One seed for every image of every task.")
    parser.add_argument("--output_root", type=Path, default=TASKS_DIR, help="Folder that holds one folder per task.")
    parser.add_argument("--overwrite", action="store_true", help="Replace the generated files of an existing task.")
    parser.add_argument("--fresh_test_seed", type=int, default=None,
                        help=f"Build only a fresh test set of {NUM_TEST} samples from this seed (it must differ from "
                             f"--seed) into --output_root (default {FRESH_TEST_DIR}).")
    args = parser.parse_args()
    args.tasks = list(SIMULATORS) if args.task == "all" else [args.task]
    if args.fresh_test_seed is not None:
        if args.fresh_test_seed == args.seed:
            parser.error(f"--fresh_test_seed {args.fresh_test_seed} is the training data's seed: a fresh test set "
                         "needs a seed never used")
        if args.output_root == TASKS_DIR:
            args.output_root = FRESH_TEST_DIR
    for task in args.tasks:
        if any((args.output_root / task / name).exists() for name in GENERATED) and not args.overwrite:
            parser.error(f"{args.output_root / task} already holds a built task; pass --overwrite to rebuild it")
    return args


def check_sample(image: np.ndarray, mask: np.ndarray, *, name: str) -> None:
    """Raises unless the pair is what the training pipeline and the benchmark assume: one non-empty object."""
    if image.dtype != np.uint8 or image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{name}: image is {image.dtype} {image.shape}, expected uint8 ({IMAGE_SIZE}, {IMAGE_SIZE})")
    if mask.dtype != bool or mask.shape != image.shape:
        raise ValueError(f"{name}: mask is {mask.dtype} {mask.shape}, expected bool {image.shape}")
    if not mask.any():
        raise ValueError(f"{name}: the mask is empty")
    _, components = ndimage.label(mask)  # 4-connectivity, the strict reading of "one connected object"
    if components != 1:
        raise ValueError(f"{name}: the mask has {components} connected components, expected 1")


def build_task(task: str, *, seed: int, test_only: bool = False) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """All `(stem, image, mask, split)` of one task (only its test samples with `test_only`), checked. Each image
    draws from its own seeded stream, so a sample does not depend on how many were drawn before it."""
    simulate = SIMULATORS[task]
    task_index = list(SIMULATORS).index(task)
    samples = []
    for index in range(NUM_TRAIN if test_only else 0, NUM_TRAIN + NUM_TEST):
        rng = np.random.default_rng([seed, task_index, index])
        image, mask = simulate(rng, size=IMAGE_SIZE)
        stem = f"{task}_{'fresh_' if test_only else ''}{index:03d}"  # fresh samples never share an old sample's name
        check_sample(image, mask, name=stem)
        samples.append((stem, image, mask, "train" if index < NUM_TRAIN else "test"))
    return samples


@contextlib.contextmanager
def staged(folder: Path, names: tuple[str, ...]) -> Iterator[Path]:
    """A scratch folder inside `folder` to write the generated `names` into; when the block ends without an error
    they replace those in `folder`, so a failed build leaves the previous one intact."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        yield Path(scratch)
        for name in names:
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(Path(scratch) / name), str(target))


def write_task(samples: list[tuple[str, np.ndarray, np.ndarray, str]], folder: Path) -> None:
    """Writes the generated files (through `staged`)."""
    with staged(folder, GENERATED) as staging:
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        rows = []
        for stem, image, mask, split in samples:
            # Grayscale ("L") PNG: a third of the bytes of RGB; the pipeline expands it to RGB as it loads.
            Image.fromarray(image).save(staging / "images" / f"{stem}.png", optimize=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                staging / "masks" / f"{stem}_mask.png", optimize=True
            )
            rows.append({"file_name": f"images/{stem}.png", "mask_file_name": f"masks/{stem}_mask.png", "split": split})
        write_metadata(staging / "metadata.csv", rows)


def write_metadata(path: Path, rows: list[dict[str, str]]) -> None:
    """`metadata.csv` as `training/data.py` reads it: `file_name,mask_file_name,split`."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "mask_file_name", "split"])
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    args = parse_args()
    fresh = args.fresh_test_seed is not None
    for task in args.tasks:
        samples = build_task(task, seed=args.fresh_test_seed if fresh else args.seed, test_only=fresh)
        write_task(samples, args.output_root / task)
        areas = np.array([mask.sum() for _, _, mask, _ in samples])
        print(
            f"{task}: wrote {0 if fresh else NUM_TRAIN} train + {NUM_TEST} test to {args.output_root / task} "
            f"(lesion area {areas.min()}-{areas.max()} px, median {int(np.median(areas))})"
        )


if __name__ == "__main__":
    main()
