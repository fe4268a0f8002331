"""Per-class scores of class-id maps: the absent-class rule, the macro average, and MONAI's DiceMetric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.semantic_metrics import class_pairs, score_class_maps

CLASSES = {0: "background", 1: "liver", 2: "kidney", 3: "spleen"}


def _maps():
    reference = np.zeros((2, 20, 20), dtype=np.uint8)
    reference[:, 2:10, 2:10] = 1
    reference[0, 12:18, 12:18] = 2  # kidney only in image 0
    prediction = reference.copy()
    prediction[0, 2:10, 2:6] = 0  # half the liver missed in image 0
    prediction[1, 14:16, 14:16] = 3  # a spleen claimed in image 1, where there is none anywhere
    return list(prediction), list(reference)


def test_absent_classes_count_only_where_claimed():
    prediction, reference = _maps()
    pairs = [(c, int(p.sum()), int(r.sum())) for c, p, r in class_pairs(prediction[1], reference[1], [1, 2, 3])]
    assert pairs == [(1, 64, 64), (3, 4, 0)]  # no kidney pair: absent from both
    scores = score_class_maps(prediction, reference, CLASSES)
    assert scores["n_pairs"] == 4  # liver in both images, kidney in image 0, spleen (claimed) in image 1
    per_class = scores["per_class"]
    assert per_class["liver"]["n_images"] == 2 and per_class["kidney"]["n_images"] == 1
    assert per_class["spleen"]["dice"] == 0.0  # a false positive where the class is absent
    assert per_class["liver"]["dice"] == pytest.approx((2 * 32 / (32 + 64) + 1.0) / 2)
    assert scores["dice"] == pytest.approx(np.mean([per_class[n]["dice"] for n in ("liver", "kidney", "spleen")]))


def test_unknown_reference_values_are_named():
    prediction, reference = _maps()
    reference[1][0, 0] = 7
    with pytest.raises(ValueError, match=r"Reference map 1 holds values \[7\] that are not classes"):
        score_class_maps(prediction, reference, CLASSES)


def test_matches_monai_dice_metric_with_both_empty_entries_dropped():
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 3, size=(6, 24, 24))  # class 3 never in the references
    prediction = np.where(rng.random((6, 24, 24)) < 0.8, reference, rng.integers(0, 4, size=(6, 24, 24)))
    prediction[:3][prediction[:3] == 3] = 0  # class 3 claimed in half the images only
    ours = score_class_maps(list(prediction), list(reference), CLASSES)

    one_hot = lambda maps: torch.nn.functional.one_hot(torch.as_tensor(maps), 4).permute(0, 3, 1, 2)  # noqa: E731
    monai = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(
        one_hot(prediction), one_hot(reference)
    ).numpy()  # (images, classes 1..3)
    both_empty = ~(one_hot(prediction).any(dim=(2, 3)) | one_hot(reference).any(dim=(2, 3))).numpy()[:, 1:]
    monai[both_empty] = np.nan
    for column, name in enumerate(("liver", "kidney", "spleen")):
        assert ours["per_class"][name]["dice"] == pytest.approx(np.nanmean(monai[:, column]), abs=1e-6)  # MONAI computes in float32
        assert ours["per_class"][name]["n_images"] == int((~both_empty[:, column]).sum())
    assert ours["dice"] == pytest.approx(np.nanmean(np.nanmean(monai, axis=0)), abs=1e-6)  # MONAI computes in float32
