"""Small NIfTI volumes for the tests: a non-identity, non-canonical affine and anisotropic voxels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

# Stored axes (i, j, k) point to (left, posterior, superior) - an LPS-like layout - with 0.9 x 0.8 x 3.0 mm voxels
# and an offset: reading it in canonical RAS orientation flips the first two axes.
AFFINE = np.array([
    [-0.9, 0.0, 0.0, 40.0],
    [0.0, -0.8, 0.0, 30.0],
    [0.0, 0.0, 3.0, -20.0],
    [0.0, 0.0, 0.0, 1.0],
])
SHAPE = (28, 24, 6)


def volume_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in HU (int16) and its label map (0 background, 1 and 2 two objects), in stored order."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    ci, cj = rng.uniform(9, 13), rng.uniform(8, 12)
    first = (((ii - ci) / 5.0) ** 2 + ((jj - cj) / 4.0) ** 2 <= 1) & (kk >= 1) & (kk <= 4)
    second = (((ii - ci - 9) / 3.0) ** 2 + ((jj - cj - 6) / 3.0) ** 2 <= 1) & (kk >= 2) & (kk <= 3)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[first] = 1
    labels[second] = 2
    image = rng.normal(0.0, 20.0, SHAPE) + 120.0 * first + 300.0 * second - 50.0
    return image.astype(np.int16), labels


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    nib.save(image, str(path))
    return path


def write_decathlon(folder: Path, *, cases: int = 3, test_cases: int = 0, names: bool = True) -> Path:
    """`imagesTr/`, `labelsTr/` (nnU-Net channel suffix on images), optional labelled test cases and dataset.json."""
    for split, count, offset in (("Tr", cases, 0), ("Ts", test_cases, 100)):
        if not count:
            continue
        (folder / f"images{split}").mkdir(parents=True, exist_ok=True)
        (folder / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for n in range(count):
            image, labels = volume_arrays(seed=offset + n)
            save_nifti(image, folder / f"images{split}" / f"case{offset + n:03d}_0000.nii.gz")
            save_nifti(labels, folder / f"labels{split}" / f"case{offset + n:03d}.nii.gz")
    if names:
        (folder / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ", "2": "lesion"}}))
    return folder
