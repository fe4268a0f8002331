"""Scores of class-id maps (the prompt-free model's predictions): Dice, IoU and HD95 per class, averaged over classes.

Each image's maps become one binary (prediction, reference) pair per foreground class, scored by the project's binary
metric (`training/metrics/icmoe_segmentation`, the definitions of docs/METRICS.md), with one rule for classes that
are absent:

- a class absent from both the prediction and the reference of an image gives **no pair**: nothing was there to find
  and nothing was claimed, so it neither rewards nor penalises (nnU-Net's convention, MONAI's `DiceMetric` with
  `ignore_empty=False` once such entries are dropped);
- a class absent from the reference but predicted scores Dice 0, IoU 0 and HD95 the image diagonal (a false
  positive), and a class in the reference but not predicted likewise (a miss).

Each class is summarised over its pairs (mean, std, count), and the headline `dice`, `iou` and `hd95` are the means
of the per-class means over the classes that have any pair (macro averages: a small organ weighs as much as a large
one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .metrics import load_segmentation_metric

METRIC_NAMES = ("dice", "iou", "hd95")


def class_pairs(prediction: np.ndarray, reference: np.ndarray, class_ids: Sequence[int]):
    """`(class_id, predicted_mask, reference_mask)` for every class of `class_ids` present in either map."""
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"A predicted class map of shape {prediction.shape} against a reference of {reference.shape}.")
    for class_id in class_ids:
        predicted, expected = prediction == class_id, reference == class_id
        if predicted.any() or expected.any():
            yield class_id, predicted, expected


def score_class_maps(
    predictions: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    id2label: dict[int, str],
    *,
    spacing=None,
) -> dict:
    """Per-class and class-averaged scores of class-id maps; `id2label` names the classes (0, the background, is not
    scored). `spacing` as for the binary metric: one `(sy, sx)` for all images, or one per image."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"Need as many predicted as reference maps, and some: got {len(predictions)} and "
                         f"{len(references)}.")
    foreground = sorted(index for index in id2label if index != 0)
    pair_predictions, pair_references, pair_classes, pair_images, pair_spacings = [], [], [], [], []
    spacings = None if spacing is None else np.broadcast_to(np.asarray(spacing, dtype=float), (len(predictions), 2))
    for image, (prediction, reference) in enumerate(zip(predictions, references)):
        unknown = set(np.unique(np.asarray(reference)).tolist()) - set(id2label)
        if unknown:
            raise ValueError(f"Reference map {image} holds values {sorted(unknown)} that are not classes ({id2label}).")
        for class_id, predicted, expected in class_pairs(prediction, reference, foreground):
            pair_predictions.append(predicted)
            pair_references.append(expected)
            pair_classes.append(class_id)
            pair_images.append(image)
            if spacings is not None:
                pair_spacings.append(spacings[image])
    result = {"n_images": len(predictions), "n_pairs": len(pair_classes), "per_class": {}}
    if not pair_classes:  # every image empty in prediction and reference alike
        empty = {"image": [], "class_id": [], **{name: [] for name in METRIC_NAMES}}
        return {**result, **{name: float("nan") for name in METRIC_NAMES}, "per_pair": empty}
    scores = load_segmentation_metric().compute(
        predictions=pair_predictions, references=pair_references, class_ids=pair_classes,
        spacing=pair_spacings or None,
    )
    for class_id in sorted(set(pair_classes)):
        result["per_class"][id2label[class_id]] = {"class_id": class_id, **scores["per_class"][class_id]}
    for name in METRIC_NAMES:
        result[name] = float(np.mean([summary[name] for summary in result["per_class"].values()]))
    result["per_pair"] = {"image": pair_images, "class_id": pair_classes,
                          **{name: scores["per_image"][name] for name in METRIC_NAMES}}
    return result
