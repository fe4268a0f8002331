"""IC-MoE segmentation metric: Dice, IoU and HD95 of binary 2-D masks, as an `evaluate.Metric`.

This file is loaded as a standalone script by `evaluate.load(<this folder>)`, which copies it
alone into the modules cache; it therefore imports nothing from the project, only numpy,
scipy and the Hugging Face libraries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
from scipy.spatial import KDTree

_CITATION = ""

_DESCRIPTION = """\
Overlap and boundary metrics of binary 2-D segmentation masks, one (prediction, reference) pair
per image: the Dice similarity coefficient, the intersection over union (IoU) and the 95th
percentile Hausdorff distance (HD95). Each metric is computed per image, then averaged over
images (mean and population standard deviation), overall and, when `class_ids` are given,
per class.

Definitions, with P the predicted and R the reference foreground:
- Dice = 2|P ∩ R| / (|P| + |R|).
- IoU = |P ∩ R| / |P ∪ R|.
- HD95 = max(d95(P -> R), d95(R -> P)), where d95(A -> B) is the 95th percentile (linear
  interpolation) of the Euclidean distances from each surface pixel of A to the nearest surface
  pixel of B. The surface of a mask is its foreground pixels that have a 4-connected background
  neighbour, pixels outside the image counting as background. Distances are in units of
  `spacing` (pixels by default). This is MONAI's
  `compute_hausdorff_distance(..., percentile=95)`.

Empty masks follow the convention of segmentation challenges, so that means stay finite:
- prediction and reference both empty: Dice 1, IoU 1, HD95 0 (a correct "nothing here").
- exactly one of them empty: Dice 0, IoU 0, and HD95 the diagonal of the image extent,
  sqrt((H * sy)^2 + (W * sx)^2); it exceeds any distance between two pixels of the image, so
  a missed or hallucinated object scores worse than any non-empty prediction.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D array-likes):
        Predicted binary masks, one per image, of shape (H, W). Values must be 0/1 or booleans;
        probabilities or logits are rejected, threshold them first. Numpy arrays, (CPU or GPU)
        torch tensors and nested lists are accepted. Sizes may differ between images.
    references (`list` of 2-D array-likes):
        Reference binary masks, same rules; each must have the shape of its prediction.
    spacing (`tuple[float, float]` or `list[tuple[float, float]]`, *optional*):
        Pixel spacing (sy, sx) along rows and columns, so that HD95 is in physical units. One
        tuple applies to every image; a list gives one tuple per image, in the order the images
        were added. Defaults to unit spacing (HD95 in pixels).
    class_ids (`list[int]`, *optional*):
        One integer label per image, in the order the images were added (for example the
        organ a box prompt asked for). When given, the output holds a `per_class` summary.

Returns:
    dice, iou, hd95 (`float`): means over images.
    dice_std, iou_std, hd95_std (`float`): population standard deviations over images.
    n_images (`int`): number of images evaluated.
    per_image (`dict[str, list[float]]`): the `dice`, `iou` and `hd95` of every image.
    per_class (`dict[int, dict]`, only with `class_ids`): for each class, the same summary keys
        (`dice`, `dice_std`, `iou`, `iou_std`, `hd95`, `hd95_std`, `n_images`).

Examples:
    >>> import numpy as np
    >>> metric = load_segmentation_metric()  # or evaluate.load("<path>/icmoe_segmentation")
    >>> reference = np.zeros((8, 8), dtype=np.uint8)
    >>> reference[2:6, 2:6] = 1
    >>> results = metric.compute(predictions=[reference], references=[reference])
    >>> results["dice"], results["hd95"]
    (1.0, 0.0)
"""

HD_PERCENTILE = 95.0
MASK_NDIM = 2
UNIT_SPACING = (1.0, 1.0)
METRIC_NAMES = ("dice", "iou", "hd95")
# Masks are stored as bytes: the (H, W) header in this dtype, then the pixels packed 8 per byte.
# `evaluate` allows its numpy format only for scalar features and hands nested ones back as
# Python lists, all at once: about 8 MB of list objects and 65 ms per 1024x1024 mask, against
# 128 KB and well under 1 ms for a packed blob, which is also 8x smaller in the cache file.
_SHAPE_DTYPE = np.dtype("<i8")
_HEADER_BYTES = MASK_NDIM * _SHAPE_DTYPE.itemsize
_MASK_FEATURE = datasets.Value("large_binary")
_NO_IMAGES_MESSAGE = "No images to evaluate: add at least one (prediction, reference) pair."


def _to_binary_mask(mask: Any, *, name: str, index: int) -> np.ndarray:
    """Return `mask` as a 2-D boolean array, or raise a ValueError naming the image.

    Casting to bool without this check would silently turn probabilities (0.3) and label maps
    (2, 255) into foreground.
    """
    if hasattr(mask, "detach"):  # a torch tensor, possibly on GPU: numpy cannot read device memory
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.ndim != MASK_NDIM:
        raise ValueError(f"{name}[{index}] must be a 2-D mask of shape (H, W), got an array of shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name}[{index}] has no pixels (shape {array.shape}); masks need H, W >= 1.")
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name}[{index}] must hold numbers or booleans, got dtype {array.dtype}.")
    is_binary = (array == 0) | (array == 1)
    if not is_binary.all():
        offending = np.unique(array[~is_binary])[:3].tolist()
        raise ValueError(
            f"{name}[{index}] must be a binary mask with values in {{0, 1}}, found {offending}; "
            "threshold probabilities or select one label of a label map first."
        )
    return array.astype(bool)


def _encode_mask(mask: np.ndarray) -> bytes:
    """Pack a boolean (H, W) mask into bytes: its shape, then its pixels 8 per byte."""
    return np.asarray(mask.shape, dtype=_SHAPE_DTYPE).tobytes() + np.packbits(mask).tobytes()


def _decode_mask(blob: bytes) -> np.ndarray:
    """Inverse of `_encode_mask`."""
    height, width = np.frombuffer(blob[:_HEADER_BYTES], dtype=_SHAPE_DTYPE)
    packed = np.frombuffer(blob[_HEADER_BYTES:], dtype=np.uint8)
    return np.unpackbits(packed, count=height * width).reshape(height, width).astype(bool)  # (H, W)


def _encode_pairs(predictions: Sequence, references: Sequence) -> tuple[list[bytes], list[bytes]]:
    """Validate a batch of (prediction, reference) masks pairwise and pack them for storage."""
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} references; "
            "pass one reference mask per predicted mask."
        )
    encoded_predictions, encoded_references = [], []
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        prediction = _to_binary_mask(prediction, name="predictions", index=index)
        reference = _to_binary_mask(reference, name="references", index=index)
        if prediction.shape != reference.shape:
            raise ValueError(
                f"predictions[{index}] has shape {prediction.shape} but references[{index}] has shape "
                f"{reference.shape}; a prediction and its reference must have the same size."
            )
        encoded_predictions.append(_encode_mask(prediction))
        encoded_references.append(_encode_mask(reference))
    return encoded_predictions, encoded_references


def _resolve_spacing(spacing: Any, n_images: int) -> np.ndarray:
    """Return one (sy, sx) pair per image, shape (n_images, 2), from a global or per-image spacing."""
    if spacing is None:
        spacing = UNIT_SPACING
    values = np.asarray(spacing, dtype=np.float64)
    if values.shape == (MASK_NDIM,):
        values = np.broadcast_to(values, (n_images, MASK_NDIM))
    elif values.shape != (n_images, MASK_NDIM):
        raise ValueError(
            f"spacing must be one (sy, sx) pair or one pair per image (n_images={n_images}), "
            f"got an array of shape {values.shape}."
        )
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"spacing values must be finite and positive, got {spacing}.")
    return values


def _resolve_class_ids(class_ids: Any, n_images: int) -> np.ndarray | None:
    """Return the class ids as an int array of length n_images, or None when not given."""
    if class_ids is None:
        return None
    values = np.asarray(class_ids)
    if values.shape != (n_images,):
        raise ValueError(f"class_ids must hold one integer per image (n_images={n_images}), got shape {values.shape}.")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"class_ids must be integers, got dtype {values.dtype}.")
    return values


def _surface_points(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Physical (y, x) coordinates of the surface pixels of a non-empty mask, shape (N, 2).

    A surface pixel is a foreground pixel with a background 4-neighbour, pixels outside the image
    counting as background: `mask & ~binary_erosion(mask)` with scipy's default cross-shaped
    element, written with shifted views because that is about ten times faster on large masks.
    """
    padded = np.pad(mask, 1)  # (H + 2, W + 2), background border
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]  # (H, W)
    return np.argwhere(mask & ~interior) * spacing  # (N, 2)


def _directed_percentile(source_points: np.ndarray, target_points: np.ndarray) -> float:
    """HD_PERCENTILE-th percentile of the distances from each source point to its nearest target point."""
    distances, _ = KDTree(target_points).query(source_points)  # (N_source,)
    return float(np.percentile(distances, HD_PERCENTILE))


def _hd95(prediction: np.ndarray, reference: np.ndarray, spacing: np.ndarray) -> float:
    """Symmetric HD95 of two non-empty masks, in units of `spacing`.

    Nearest-surface distances come from a k-d tree over the surface points: exact Euclidean
    distances, equal to reading a Euclidean distance transform at the surface, but a few
    thousand points instead of a dense transform of every pixel (the path MONAI takes on CPU).
    """
    # Every surface pixel lies in the bounding box of the union, and cropping shifts both
    # surfaces alike, so distances are unchanged while the surface search covers fewer pixels.
    rows = np.flatnonzero((prediction | reference).any(axis=1))
    cols = np.flatnonzero((prediction | reference).any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    prediction_points = _surface_points(prediction[box], spacing)
    reference_points = _surface_points(reference[box], spacing)
    return max(
        _directed_percentile(prediction_points, reference_points),
        _directed_percentile(reference_points, prediction_points),
    )


def _score_image(prediction: np.ndarray, reference: np.ndarray, spacing: np.ndarray) -> tuple[float, float, float]:
    """Dice, IoU and HD95 of one image, with the empty-mask conventions of the module description."""
    predicted_area = int(prediction.sum())
    reference_area = int(reference.sum())
    if predicted_area == 0 and reference_area == 0:
        return 1.0, 1.0, 0.0
    if predicted_area == 0 or reference_area == 0:
        height, width = prediction.shape
        return 0.0, 0.0, float(np.hypot(height * spacing[0], width * spacing[1]))
    intersection = int(np.count_nonzero(prediction & reference))
    union = predicted_area + reference_area - intersection
    dice = 2.0 * intersection / (predicted_area + reference_area)
    return dice, intersection / union, _hd95(prediction, reference, spacing)


def _summarize(scores: dict[str, np.ndarray]) -> dict[str, float | int]:
    """Mean and population standard deviation of each per-image metric."""
    summary: dict[str, float | int] = {}
    for name in METRIC_NAMES:
        summary[name] = float(np.mean(scores[name]))
        summary[f"{name}_std"] = float(np.std(scores[name]))
    summary["n_images"] = len(scores[METRIC_NAMES[0]])
    return summary


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class IcmoeSegmentation(evaluate.Metric):
    """Dice, IoU and HD95 of binary 2-D masks, overall, per image and per class."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _MASK_FEATURE, "references": _MASK_FEATURE}),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Validate and pack the masks, then store them (see `evaluate.Metric.add_batch`)."""
        if predictions is not None and references is not None:
            predictions, references = _encode_pairs(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Validate and pack one mask pair, then store it (see `evaluate.Metric.add`)."""
        if prediction is not None and reference is not None:
            (prediction,), (reference,) = _encode_pairs([prediction], [reference])
        super().add(prediction=prediction, reference=reference, **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs) -> dict[str, Any] | None:
        """Check `spacing` and `class_ids` early, then compute (see `evaluate.Metric.compute`).

        An error raised inside `_compute` comes after `evaluate` has finalized its cache file and
        leaves that file locked, so the next `compute` stalls on the lock. In a single process
        the image count is known up front and bad keyword arguments are rejected before that,
        with every added image kept for a corrected call.
        """
        if self.num_process == 1:
            n_images = len(self) + (0 if predictions is None else len(predictions))
            if n_images == 0:
                raise ValueError(_NO_IMAGES_MESSAGE)
            _resolve_spacing(kwargs.get("spacing"), n_images)
            _resolve_class_ids(kwargs.get("class_ids"), n_images)
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(
        self,
        predictions: list[bytes],
        references: list[bytes],
        spacing: Any = None,
        class_ids: Any = None,
    ) -> dict[str, Any]:
        n_images = len(predictions)
        if n_images == 0:  # reachable only in distributed runs, which skip the early checks
            raise ValueError(_NO_IMAGES_MESSAGE)
        spacings = _resolve_spacing(spacing, n_images)
        labels = _resolve_class_ids(class_ids, n_images)

        per_image_scores = [
            _score_image(_decode_mask(prediction), _decode_mask(reference), image_spacing)
            for prediction, reference, image_spacing in zip(predictions, references, spacings)
        ]
        scores = dict(zip(METRIC_NAMES, np.asarray(per_image_scores, dtype=np.float64).T))  # name -> (N,)

        results: dict[str, Any] = _summarize(scores)
        results["per_image"] = {name: values.tolist() for name, values in scores.items()}
        if labels is not None:
            results["per_class"] = {
                int(label): _summarize({name: values[labels == label] for name, values in scores.items()})
                for label in np.unique(labels)
            }
        return results
