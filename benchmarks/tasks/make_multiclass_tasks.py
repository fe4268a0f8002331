# Builds the simulated multi-class tasks of the prompt-free (semantic) benchmark, offline and deterministic from
# one seed; both are cuts of one anatomical model of the upper abdomen (abdomen.py, simulate_ct.py):
#
#   ct_abdomen_organs   2-D axial CT slices through the soft-tissue window: 8-bit PNGs, class-id PNG masks,
#                       metadata.csv (train / validation / test) and labels.json
#   ct_abdomen_volumes  CT volumes with anisotropic voxels: int16 HU NIfTI and uint8 label maps in the Medical
#                       Segmentation Decathlon layout (imagesTr/, labelsTr/, imagesTs/, labelsTs/, dataset.json)
#
# Classes: 0 background, 1 liver, 2 spleen, 3 kidney_right, 4 kidney_left, 5 aorta. Every sample is checked before
# anything is written; only the generated files are replaced, the hand-written README.md beside them stays.
# numpy, scipy, pillow and nibabel only; CPU, about 80 s for both tasks with two workers (2.5 minutes with one).
#
#   python benchmarks/tasks/make_multiclass_tasks.py --task all --overwrite

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from abdomen import AORTA, CLASSES, KIDNEY_LEFT, KIDNEY_RIGHT, LIVER, SPLEEN
from make_simulated_tasks import DEFAULT_SEED, TASKS_DIR, staged, write_metadata
from simulate_ct import simulate_ct_slice, simulate_ct_volume

SLICES, VOLUMES = "ct_abdomen_organs", "ct_abdomen_volumes"
TASKS = (SLICES, VOLUMES)
# Random streams `[seed, stream, index]`: 0 and 1 are the MR and US tasks of make_simulated_tasks.py.
STREAMS = {SLICES: 2, VOLUMES: 3}
GENERATED = {SLICES: ("images", "masks", "metadata.csv", "labels.json"),
             VOLUMES: ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "dataset.json")}
IMAGE_SIZE = 128
SLICE_SPLITS = (("train", 200), ("validation", 50), ("test", 100))
VOLUME_SIZE, NUM_SLICES, SLICE_MM = 112, 24, 7.5
VOLUME_SPLITS = (("Tr", 12), ("Ts", 6))  # Decathlon's folder suffixes: training, test
MIN_ANISOTROPY = 1.5  # slice spacing over pixel spacing
LABELS = {str(index): name for index, name in enumerate(CLASSES)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the simulated multi-class CT tasks (2-D slices, volumes).")
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="One seed for every sample of every task.")
    parser.add_argument("--output_root", type=Path, default=TASKS_DIR, help="Folder that holds one folder per task.")
    parser.add_argument("--num_workers", type=int, default=1, help="Processes that simulate samples in parallel.")
    parser.add_argument("--overwrite", action="store_true", help="Replace the generated files of an existing task.")
    args = parser.parse_args()
    if args.num_workers < 1:
        parser.error(f"--num_workers must be at least 1, got {args.num_workers}")
    args.tasks = list(TASKS) if args.task == "all" else [args.task]
    for task in args.tasks:
        if any((args.output_root / task / name).exists() for name in GENERATED[task]) and not args.overwrite:
            parser.error(f"{args.output_root / task} already holds a built task; pass --overwrite to rebuild it")
    return args


def split_of(index: int, splits: tuple[tuple[str, int], ...]) -> str:
    """The split of sample `index` when the splits take consecutive indices in order."""
    for name, count in splits:
        if index < count:
            return name
        index -= count
    raise IndexError(f"sample {index} lies beyond the splits {splits}")


def centroid(labels: np.ndarray, organ: int, axis: int) -> float | None:
    """Mean index along `axis` of an organ's pixels (None when absent)."""
    where = np.nonzero(labels == organ)
    return float(where[axis].mean()) if where[0].size else None


def check_sides(labels: np.ndarray, *, axis: int, name: str) -> None:
    """The organs lie on their anatomical side of the aorta along `axis`, whose index grows towards the patient's
    left: a flipped or transposed geometry fails here."""
    aorta = centroid(labels, AORTA, axis)
    if aorta is None:
        raise ValueError(f"{name}: no aorta; every slice of the simulated range crosses it")
    for organ, side in ((LIVER, -1), (KIDNEY_RIGHT, -1), (SPLEEN, 1), (KIDNEY_LEFT, 1)):
        position = centroid(labels, organ, axis)
        if position is not None and np.sign(position - aorta) != side:
            raise ValueError(f"{name}: the {CLASSES[organ]} lies on the wrong side of the aorta")


def check_slice(image: np.ndarray, labels: np.ndarray, *, name: str) -> None:
    """Raises unless the pair is what the semantic pipeline assumes (8-bit image, uint8 class ids of `CLASSES` only)
    and the anatomy is in place: the aorta present, the organs on their sides."""
    if image.dtype != np.uint8 or image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{name}: image is {image.dtype} {image.shape}, expected uint8 ({IMAGE_SIZE}, {IMAGE_SIZE})")
    if labels.dtype != np.uint8 or labels.shape != image.shape:
        raise ValueError(f"{name}: labels are {labels.dtype} {labels.shape}, expected uint8 {image.shape}")
    if labels.max() >= len(CLASSES):
        raise ValueError(f"{name}: class id {labels.max()} beyond {len(CLASSES) - 1}")
    check_sides(labels, axis=1, name=name)  # columns run from the patient's right


def check_volume(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, *, name: str) -> None:
    """Raises unless the volume is int16 HU with a uint8 label map of the same grid, every organ present as one
    connected body, anisotropic voxels and the organs on their sides."""
    shape = (VOLUME_SIZE, VOLUME_SIZE, NUM_SLICES)
    if image.dtype != np.int16 or image.shape != shape:
        raise ValueError(f"{name}: image is {image.dtype} {image.shape}, expected int16 {shape}")
    if labels.dtype != np.uint8 or labels.shape != shape:
        raise ValueError(f"{name}: labels are {labels.dtype} {labels.shape}, expected uint8 {shape}")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not spacing[2] >= MIN_ANISOTROPY * spacing[:2].max():
        raise ValueError(f"{name}: spacing {spacing.round(2).tolist()} mm is not anisotropic")
    for organ in range(1, len(CLASSES)):
        _, components = ndimage.label(labels == organ, structure=np.ones((3, 3, 3)))
        if components != 1:
            raise ValueError(f"{name}: the {CLASSES[organ]} has {components} connected components, expected 1")
    check_sides(labels, axis=0, name=name)  # i runs towards the patient's left


def check_splits(samples: list[tuple]) -> None:
    """Raises unless every class shows in some slice of every split: per-class scores need it."""
    for split, _ in SLICE_SPLITS:
        shown = set().union(*(np.unique(labels).tolist() for _, _, labels, where in samples if where == split))
        if shown != set(range(len(CLASSES))):
            missing = [CLASSES[organ] for organ in range(len(CLASSES)) if organ not in shown]
            raise ValueError(f"split {split} has no slice of {missing}")


def slice_sample(index: int, *, seed: int) -> tuple[str, np.ndarray, np.ndarray, str]:
    """Slice `index`, checked: `(stem, image, labels, split)`. Each sample draws from its own seeded stream, so it
    does not depend on how many were drawn before it."""
    image, labels = simulate_ct_slice(np.random.default_rng([seed, STREAMS[SLICES], index]), size=IMAGE_SIZE)
    stem = f"{SLICES}_{index:03d}"
    check_slice(image, labels, name=stem)
    return stem, image, labels, split_of(index, SLICE_SPLITS)


def volume_sample(index: int, *, seed: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, str]:
    """Volume `index`, checked: `(case, image, labels, affine, split suffix)`."""
    rng = np.random.default_rng([seed, STREAMS[VOLUMES], index])
    image, labels, affine = simulate_ct_volume(rng, size=VOLUME_SIZE, num_slices=NUM_SLICES, thickness_mm=SLICE_MM)
    case = f"abdomen_{index:03d}"
    check_volume(image, labels, affine, name=case)
    return case, image, labels, affine, split_of(index, VOLUME_SPLITS)


def build_task(task: str, *, seed: int, num_workers: int = 1, indices: list[int] | None = None) -> list[tuple]:
    """The checked samples of a task (all of them, or those of `indices`), in index order."""
    sample = partial(slice_sample if task == SLICES else volume_sample, seed=seed)
    if indices is None:
        indices = list(range(sum(count for _, count in (SLICE_SPLITS if task == SLICES else VOLUME_SPLITS))))
    if num_workers == 1:
        return [sample(index) for index in indices]
    with ProcessPoolExecutor(num_workers) as pool:
        return list(pool.map(sample, indices))


def png_bytes(array: np.ndarray) -> bytes:
    """A grayscale ("L") PNG: images and class-id maps alike decode to the same uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A `.nii.gz` file's bytes with the affine as both qform and sform (scanner coordinates, millimetres). gzip's
    header time is zeroed: the same arrays give the same bytes at every build."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return gzip.compress(image.to_bytes(), compresslevel=9, mtime=0)


def write_slices(samples: list[tuple], folder: Path) -> None:
    """`images/`, `masks/` (class-id maps), `metadata.csv` and `labels.json` (through `staged`)."""
    with staged(folder, GENERATED[SLICES]) as staging:
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        rows = []
        for stem, image, labels, split in samples:
            (staging / "images" / f"{stem}.png").write_bytes(png_bytes(image))
            (staging / "masks" / f"{stem}_mask.png").write_bytes(png_bytes(labels))
            rows.append({"file_name": f"images/{stem}.png", "mask_file_name": f"masks/{stem}_mask.png", "split": split})
        write_metadata(staging / "metadata.csv", rows)
        (staging / "labels.json").write_text(json.dumps(LABELS, indent=2) + "\n", encoding="utf-8")


def write_volumes(samples: list[tuple], folder: Path) -> None:
    """The Decathlon layout: `images{Tr,Ts}/`, `labels{Tr,Ts}/` and `dataset.json` (through `staged`)."""
    with staged(folder, GENERATED[VOLUMES]) as staging:
        entries = {suffix: [] for suffix, _ in VOLUME_SPLITS}
        for suffix, _ in VOLUME_SPLITS:
            (staging / f"images{suffix}").mkdir()
            (staging / f"labels{suffix}").mkdir()
        for case, image, labels, affine, suffix in samples:
            (staging / f"images{suffix}" / f"{case}.nii.gz").write_bytes(nifti_bytes(image, affine))
            (staging / f"labels{suffix}" / f"{case}.nii.gz").write_bytes(nifti_bytes(labels, affine))
            entries[suffix].append({"image": f"./images{suffix}/{case}.nii.gz",
                                    "label": f"./labels{suffix}/{case}.nii.gz"})
        dataset = {
            "name": VOLUMES,
            "description": "SIMULATED abdominal CT with organ label maps, not patient data (see README.md)",
            "reference": "icmoe-sam, benchmarks/tasks/make_multiclass_tasks.py",
            "licence": "Apache-2.0",
            "release": "1.0",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": LABELS,
            "numTraining": len(entries["Tr"]),
            "numTest": len(entries["Ts"]),
            "training": entries["Tr"],
            "test": entries["Ts"],  # with labels: this set's test cases are scored
        }
        (staging / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")


def slice_statistics(folder: Path) -> list[str]:
    """Markdown rows, per class: images that show it in each split and its area where shown (from the files)."""
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    splits = [name for name, _ in SLICE_SPLITS]
    shown = {(organ, split): 0 for organ in range(1, len(CLASSES)) for split in splits}
    areas = {organ: [] for organ in range(1, len(CLASSES))}
    for row in rows:
        with Image.open(folder / row["mask_file_name"]) as mask:
            counts = np.bincount(np.asarray(mask).ravel(), minlength=len(CLASSES))
        for organ in areas:
            if counts[organ]:
                shown[organ, row["split"]] += 1
                areas[organ].append(int(counts[organ]))
    return [f"| {organ} | `{CLASSES[organ]}` | " + " | ".join(str(shown[organ, split]) for split in splits)
            + f" | {int(np.median(areas[organ]))} | {min(areas[organ])}-{max(areas[organ])} |" for organ in areas]


def volume_statistics(folder: Path) -> list[str]:
    """Markdown rows, per class: volumes that hold it, median voxels and median volume in millilitres."""
    voxels = {organ: [] for organ in range(1, len(CLASSES))}
    millilitres = {organ: [] for organ in voxels}
    label_files = sorted(p for suffix, _ in VOLUME_SPLITS for p in (folder / f"labels{suffix}").glob("*.nii.gz"))
    for path in label_files:
        image = nib.load(path)
        counts = np.bincount(np.asarray(image.dataobj).ravel(), minlength=len(CLASSES))
        voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
        for organ in voxels:
            if counts[organ]:
                voxels[organ].append(int(counts[organ]))
                millilitres[organ].append(counts[organ] * voxel_ml)
    return [f"| {organ} | `{CLASSES[organ]}` | {len(voxels[organ])} / {len(label_files)} | "
            f"{int(np.median(voxels[organ]))} | {np.median(millilitres[organ]):.0f} | "
            f"{min(millilitres[organ]):.0f}-{max(millilitres[organ]):.0f} |" for organ in voxels]


def main() -> None:
    args = parse_args()
    for task in args.tasks:
        samples = build_task(task, seed=args.seed, num_workers=args.num_workers)
        if task == SLICES:
            check_splits(samples)  # volumes hold every class each (`check_volume`)
        folder = args.output_root / task
        (write_slices if task == SLICES else write_volumes)(samples, folder)
        print(f"{task}: wrote {len(samples)} samples to {folder}; per-class statistics (the README's table):")
        print("\n".join(slice_statistics(folder) if task == SLICES else volume_statistics(folder)))


if __name__ == "__main__":
    main()
