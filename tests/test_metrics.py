"""The segmentation metric (Dice, IoU, HD95): hand-computed cases, empty-mask conventions,
spacing, per-class summaries, input errors, and agreement with MONAI on random blobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
from scipy import ndimage

from training.metrics import SEGMENTATION_METRIC_PATH, load_segmentation_metric

IMAGE_SHAPE = (40, 48)
SQUARE_TOP_LEFT = (10, 12)
SQUARE_SIDE = 12
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def metric():
    return load_segmentation_metric()


def square(shift: tuple[int, int] = (0, 0), shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """A SQUARE_SIDE square at SQUARE_TOP_LEFT moved by `shift` = (rows, cols)."""
    mask = np.zeros(shape, dtype=np.uint8)
    top, left = SQUARE_TOP_LEFT[0] + shift[0], SQUARE_TOP_LEFT[1] + shift[1]
    mask[top : top + SQUARE_SIDE, left : left + SQUARE_SIDE] = 1
    return mask


def random_blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Irregular, possibly several, blobs: thresholded smoothed noise."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    smooth = ndimage.gaussian_filter(noise, sigma=min(shape) / 8)
    return smooth > np.quantile(smooth, 0.6)


def test_metric_path_is_the_loaded_script():
    assert SEGMENTATION_METRIC_PATH.endswith("icmoe_segmentation")
    assert load_segmentation_metric().name == "icmoe_segmentation"


@pytest.mark.parametrize("mask", [square(), square(shape=(17, 5 + SQUARE_TOP_LEFT[1] + SQUARE_SIDE))])
def test_perfect_match(metric, mask):
    results = metric.compute(predictions=[mask], references=[mask.astype(bool)])
    assert (results["dice"], results["iou"], results["hd95"]) == (1.0, 1.0, 0.0)
    assert (results["dice_std"], results["iou_std"], results["hd95_std"]) == (0.0, 0.0, 0.0)
    assert results["n_images"] == 1


@pytest.mark.parametrize(
    ("prediction", "reference", "spacing", "expected"),
    [
        (np.zeros((6, 8)), np.zeros((6, 8)), None, (1.0, 1.0, 0.0)),
        (np.zeros((6, 8)), np.ones((6, 8)), None, (0.0, 0.0, 10.0)),  # diagonal of 6 x 8
        (np.ones((6, 8)), np.zeros((6, 8)), None, (0.0, 0.0, 10.0)),
        (np.zeros((6, 8)), np.ones((6, 8)), (0.5, 2.0), (0.0, 0.0, math.hypot(3.0, 16.0))),
    ],
    ids=["both-empty", "prediction-empty", "reference-empty", "reference-empty-with-spacing"],
)
def test_empty_mask_conventions(metric, prediction, reference, spacing, expected):
    results = metric.compute(predictions=[prediction], references=[reference], spacing=spacing)
    assert (results["dice"], results["iou"]) == expected[:2]
    assert results["hd95"] == pytest.approx(expected[2])


@pytest.mark.parametrize("shift", [(0, 1), (0, 3), (2, 0), (-4, 0)])
def test_shifted_square(metric, shift):
    k = abs(shift[0]) + abs(shift[1])
    results = metric.compute(predictions=[square(shift)], references=[square()])
    # The shifted square overlaps the reference on SQUARE_SIDE x (SQUARE_SIDE - k) pixels.
    assert results["dice"] == pytest.approx((SQUARE_SIDE - k) / SQUARE_SIDE)
    assert results["iou"] == pytest.approx((SQUARE_SIDE - k) / (SQUARE_SIDE + k))
    assert results["hd95"] == pytest.approx(k)


@pytest.mark.parametrize(
    ("shift", "spacing", "expected_hd95"),
    [((0, 2), (3.0, 0.5), 1.0), ((2, 0), (3.0, 0.5), 6.0), ((0, 2), 0.25 * np.ones(2), 0.5)],
)
def test_spacing_scales_hd95_only(metric, shift, spacing, expected_hd95):
    results = metric.compute(predictions=[square(shift)], references=[square()], spacing=spacing)
    assert results["hd95"] == pytest.approx(expected_hd95)
    assert results["dice"] == pytest.approx((SQUARE_SIDE - 2) / SQUARE_SIDE)


def test_per_image_spacing_and_summary(metric):
    predictions = [square((0, 2)), square((0, 2)), square()]
    references = [square()] * len(predictions)
    results = metric.compute(predictions=predictions, references=references, spacing=[(1, 1), (1, 3), (1, 1)])
    assert results["per_image"]["hd95"] == pytest.approx([2.0, 6.0, 0.0])
    assert results["hd95"] == pytest.approx(8.0 / 3)
    assert results["hd95_std"] == pytest.approx(np.std([2.0, 6.0, 0.0]))  # population std
    assert results["n_images"] == len(predictions)
    assert "per_class" not in results


def test_per_class(metric):
    predictions = [square((0, 3)), np.zeros(IMAGE_SHAPE), square(), square((1, 0))]
    references = [square()] * len(predictions)
    results = metric.compute(predictions=predictions, references=references, class_ids=[4, 1, 4, 1])
    assert sorted(results["per_class"]) == [1, 4]
    organ = results["per_class"][4]
    assert organ["n_images"] == 2
    assert organ["dice"] == pytest.approx(((SQUARE_SIDE - 3) / SQUARE_SIDE + 1.0) / 2)
    assert organ["hd95"] == pytest.approx(1.5)
    assert organ["hd95_std"] == pytest.approx(1.5)
    missed = results["per_class"][1]
    assert missed["iou"] == pytest.approx((0.0 + (SQUARE_SIDE - 1) / (SQUARE_SIDE + 1)) / 2)
    assert missed["hd95"] == pytest.approx((math.hypot(*IMAGE_SHAPE) + 1.0) / 2)


def test_add_batch_and_add_accumulate_like_one_compute(metric):
    predictions = [square((0, 1)), torch.from_numpy(square((2, 0))).bool(), square().astype(np.float32)]
    references = [square(), square(), np.zeros(IMAGE_SHAPE)]
    expected = metric.compute(predictions=predictions, references=references, class_ids=[0, 1, 1])
    metric.add_batch(predictions=predictions[:2], references=references[:2])
    metric.add(prediction=predictions[2], reference=references[2])
    assert metric.compute(class_ids=[0, 1, 1]) == expected


@pytest.mark.parametrize(
    ("predictions", "references", "kwargs", "message"),
    [
        ([square()], [square()[:-1]], {}, "same size"),
        ([square() * 0.5], [square()], {}, "binary mask"),
        ([square()], [square() * 255], {}, "binary mask"),
        ([square().astype(np.int64) - 1], [square()], {}, "binary mask"),
        ([square()[None]], [square()[None]], {}, "2-D mask"),
        ([square(), square()], [square()], {}, "one reference mask per predicted mask"),
        ([square()], [square()], {"spacing": (1.0, 1.0, 1.0)}, "spacing must be one"),
        ([square()], [square()], {"spacing": (0.0, 1.0)}, "finite and positive"),
        ([square()], [square()], {"class_ids": [1, 2]}, "one integer per image"),
        ([square()], [square()], {"class_ids": [0.5]}, "must be integers"),
        ([], [], {}, "No images to evaluate"),
    ],
    ids=[
        "shape-mismatch",
        "probabilities",
        "label-map",
        "negative",
        "3-d",
        "count-mismatch",
        "spacing-length",
        "spacing-zero",
        "class-ids-length",
        "class-ids-float",
        "no-images",
    ],
)
def test_bad_inputs_raise(metric, predictions, references, kwargs, message):
    with pytest.raises(ValueError, match=message):
        metric.compute(predictions=predictions, references=references, **kwargs)


def test_bad_keyword_keeps_added_images(metric):
    metric.add_batch(predictions=[square((0, 1))], references=[square()])
    with pytest.raises(ValueError, match="one integer per image"):
        metric.compute(class_ids=[1, 2])
    assert metric.compute(class_ids=[1])["per_class"][1]["hd95"] == pytest.approx(1.0)


BLOB_CASES = [  # (shape, spacing) of each random image
    ((48, 48), (1.0, 1.0)),
    ((64, 40), (1.0, 1.0)),
    ((33, 57), (0.7, 1.3)),
    ((50, 50), (2.0, 0.5)),
    ((80, 72), (1.0, 1.0)),
    ((41, 63), (1.5, 1.5)),
]


# MONAI's Hausdorff distance passes a deprecated argument to its own `get_mask_edges`.
@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
def test_agrees_with_monai_on_random_blobs(metric):
    predictions = [random_blobs(shape, seed=2 * i) for i, (shape, _) in enumerate(BLOB_CASES)]
    references = [random_blobs(shape, seed=2 * i + 1) for i, (shape, _) in enumerate(BLOB_CASES)]
    spacings = [spacing for _, spacing in BLOB_CASES]
    results = metric.compute(predictions=predictions, references=references, spacing=spacings)

    for index, (prediction, reference, spacing) in enumerate(zip(predictions, references, spacings)):
        y_pred = torch.from_numpy(prediction)[None, None].float()  # (1, 1, H, W)
        y = torch.from_numpy(reference)[None, None].float()  # (1, 1, H, W)
        expected = {
            "dice": compute_dice(y_pred, y, include_background=True),
            "iou": compute_iou(y_pred, y, include_background=True),
            "hd95": compute_hausdorff_distance(
                y_pred, y, include_background=True, percentile=95, spacing=list(spacing)
            ),
        }
        for name, value in expected.items():
            assert results["per_image"][name][index] == pytest.approx(value.item(), rel=TOLERANCE, abs=TOLERANCE), (
                f"{name} of image {index}"
            )
    # The blobs are imperfect matches, so the comparison above exercised non-trivial values.
    assert 0.0 < min(results["per_image"]["dice"]) and max(results["per_image"]["dice"]) < 1.0
    assert min(results["per_image"]["hd95"]) > 1.0
