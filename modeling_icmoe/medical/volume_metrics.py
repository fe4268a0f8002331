"""Per-volume segmentation metrics in millimetres: Dice, IoU, HD95 and normalised surface Dice (NSD).

Surfaces and distances follow the 2-D metric of the training code, in three dimensions: the surface of a mask is
its foreground voxels with a background 6-neighbour (outside the volume counts as background); distances are
Euclidean between voxel centres scaled by the voxel spacing, found exactly with a k-d tree.

- HD95 = max(d95(P -> R), d95(R -> P)), d95 the 95th percentile of nearest-surface distances.
- NSD at tolerance t = (#{p in S_P : d(p, S_R) <= t} + #{r in S_R : d(r, S_P) <= t}) / (|S_P| + |S_R|).

Empty masks: both empty score Dice 1, IoU 1, HD95 0, NSD 1; exactly one empty scores Dice 0, IoU 0, NSD 0 and HD95
the diagonal of the volume's extent (larger than any distance inside it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HD_PERCENTILE = 95.0
METRIC_NAMES = ("dice", "iou", "hd95", "nsd")


def _surface_points(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Physical coordinates `(N, ndim)` of the surface voxels of a non-empty mask."""
    padded = np.pad(mask, 1)
    interior = np.ones(mask.shape, dtype=bool)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    for axis in range(mask.ndim):
        for shift in (slice(None, -2), slice(2, None)):
            index = list(inner)
            index[axis] = shift
            interior &= padded[tuple(index)]
    return np.argwhere(mask & ~interior) * spacing


def score_volume(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], *, nsd_tolerance_mm: float = 1.0
) -> dict[str, float]:
    """Dice, IoU, HD95 (mm) and NSD (at `nsd_tolerance_mm`) of two binary masks of the same shape (2-D or 3-D).

    Args:
        spacing: voxel size along each axis of the arrays, in mm.
    """
    from scipy.spatial import KDTree

    prediction, reference = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    spacing = np.asarray(spacing, dtype=np.float64)
    if prediction.shape != reference.shape:
        raise ValueError(f"Prediction shape {prediction.shape} differs from reference shape {reference.shape}.")
    if spacing.shape != (prediction.ndim,) or not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise ValueError(f"`spacing` must give one positive size per axis ({prediction.ndim}), got {spacing.tolist()}.")
    if nsd_tolerance_mm < 0:
        raise ValueError(f"`nsd_tolerance_mm` must be >= 0, got {nsd_tolerance_mm}.")
    predicted, expected = int(prediction.sum()), int(reference.sum())
    if predicted == 0 and expected == 0:
        return {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0}
    if predicted == 0 or expected == 0:
        extent = float(np.linalg.norm(np.asarray(prediction.shape) * spacing))
        return {"dice": 0.0, "iou": 0.0, "hd95": extent, "nsd": 0.0}
    intersection = int(np.count_nonzero(prediction & reference))
    union = predicted + expected - intersection
    # Cropping both masks to the union's bounding box shifts both surfaces alike: distances are unchanged.
    box = tuple(slice(idx.min(), idx.max() + 1) for idx in np.nonzero(prediction | reference))
    predicted_points = _surface_points(prediction[box], spacing)
    reference_points = _surface_points(reference[box], spacing)
    to_reference, _ = KDTree(reference_points).query(predicted_points)
    to_prediction, _ = KDTree(predicted_points).query(reference_points)
    hd95 = max(np.percentile(to_reference, HD_PERCENTILE), np.percentile(to_prediction, HD_PERCENTILE))
    within = np.count_nonzero(to_reference <= nsd_tolerance_mm) + np.count_nonzero(to_prediction <= nsd_tolerance_mm)
    return {
        "dice": 2.0 * intersection / (predicted + expected),
        "iou": intersection / union,
        "hd95": float(hd95),
        "nsd": within / (len(predicted_points) + len(reference_points)),
    }


def summarize(scores: list[dict[str, float]]) -> dict[str, float]:
    """Mean and population standard deviation of each metric over cases, and their count."""
    summary: dict[str, float] = {}
    for name in METRIC_NAMES:
        values = np.array([score[name] for score in scores], dtype=np.float64)
        summary[name], summary[f"{name}_std"] = float(values.mean()), float(values.std())
    summary["n_cases"] = len(scores)
    return summary
