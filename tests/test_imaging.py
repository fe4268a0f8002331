"""The imaging rules are written once (`modeling_icmoe/imaging.py`) and every user of them agrees: the model, the
pipeline, volume prompts and training take the same boxes and refuse the same ones, the box of a one-pixel-wide
object included; the binary-mask rule is the same for the data pipeline and the loss; moved names still work, with a
warning."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch
from helpers import tiny_base_sam, tiny_sam_processor, trained_icmoe

from modeling_icmoe import IcMoeSamSegmentationPipeline, imaging
from modeling_icmoe.losses import binarize_labels
from modeling_icmoe.medical.propagation import check_key_prompts
from modeling_icmoe.medical.volumes import SlicePrompt
from modeling_icmoe.modeling_icmoe_sam import IcMoeSamModel
from modeling_icmoe.pipeline_icmoe_sam import _check_prompts
from training.data import binary_mask

FRAME = (20, 30)  # (height, width)
BOXES = [  # (box, valid under the one rule)
    ([2.0, 3.0, 10.0, 12.0], True),
    ([5.0, 3.0, 5.0, 12.0], True),  # zero width: the inclusive box of a one-pixel-wide object
    ([5.0, 7.0, 9.0, 7.0], True),  # zero height
    ([0.0, 0.0, 30.0, 20.0], True),  # the whole closed frame
    ([6.0, 3.0, 5.0, 12.0], False),  # inverted
    ([2.0, 3.0, 30.5, 12.0], False),  # past the right edge
    ([-0.5, 3.0, 5.0, 12.0], False),  # left of the frame
    ([2.0, 3.0, 5.0, float("nan")], False),
]


def _model_check(box):
    IcMoeSamModel._check_boxes(torch.tensor([[box]]), FRAME)


def _pipeline_check(box):
    _check_prompts({"input_boxes": box}, image_size=FRAME)


def _volume_check(box):
    check_key_prompts([SlicePrompt(0, 1, box, "boxes.json entry 0")], [], num_slices=1, slice_shape=FRAME)


@pytest.mark.parametrize("check", [imaging.check_boxes, _model_check, _pipeline_check, _volume_check],
                         ids=["imaging", "model", "pipeline", "volumes"])
@pytest.mark.parametrize(("box", "valid"), BOXES, ids=[str(b) for b, _ in BOXES])
def test_every_user_applies_the_one_box_rule(check, box, valid):
    if check is imaging.check_boxes:
        check = lambda b: imaging.check_boxes(b, FRAME)  # noqa: E731
    if valid:
        check(box)
    else:
        with pytest.raises(ValueError, match=r"x0 <= x1|outside|NaN"):
            check(box)


def test_the_training_box_of_a_one_pixel_wide_object_segments_through_the_pipeline():
    """`mask_box` of a one-pixel-wide object has x0 == x1; the pipeline used to refuse that box."""
    mask = np.zeros((48, 56), bool)
    mask[10:30, 21] = True
    box = imaging.mask_box(mask)
    assert box == [21.0, 10.0, 21.0, 29.0]
    base = tiny_base_sam()
    segmenter = IcMoeSamSegmentationPipeline(model=trained_icmoe(base), processor=tiny_sam_processor(), device=-1)
    image = np.random.default_rng(0).integers(0, 255, (48, 56, 3), dtype=np.uint8)
    result = segmenter(image, input_boxes=box)
    assert result["masks"].shape == (1, 48, 56) and np.isfinite(result["scores"]).all()


@pytest.mark.parametrize(("values", "foreground"), [
    ([0, 1], 1), ([0], 1), ([1], 1), ([0, 255], 255), ([255], 255), ([0, 1, 255], None), ([0, 2], None),
    ([0.0, 0.5], None),
])
def test_the_data_pipeline_and_the_loss_share_the_binary_mask_rule(values, foreground):
    array = np.array(values * 2, dtype=np.float32 if any(isinstance(v, float) for v in values) else np.uint8)
    plane = array.reshape(2, -1)
    if foreground is None:
        for check in (lambda: binary_mask(plane), lambda: binarize_labels(torch.from_numpy(plane))):
            with pytest.raises(ValueError, match="not binary"):
                check()
        return
    expected = plane == foreground
    assert np.array_equal(binary_mask(plane), expected)
    assert np.array_equal(binarize_labels(torch.from_numpy(plane)).numpy(), expected.astype(np.float32))


@pytest.mark.parametrize(("module", "name"), [
    ("modeling_icmoe.pipeline_icmoe_sam", "to_uint8_rgb"),
    ("modeling_icmoe.pipeline_icmoe_sam", "resolve_window"),
    ("modeling_icmoe.pipeline_icmoe_sam", "scale_intensities"),
    ("modeling_icmoe.pipeline_icmoe_sam", "CT_WINDOWS"),
    ("modeling_icmoe.pipeline_icmoe_sam", "DEFAULT_INTENSITY_PERCENTILES"),
    ("modeling_icmoe.pipeline_icmoe_sam", "load_medical_image"),
    ("modeling_icmoe.volumes", "mask_box"),
    ("modeling_icmoe.medical.volumes", "mask_box"),
])
def test_moved_names_work_from_their_old_module_with_a_warning(module, name):
    with pytest.warns(DeprecationWarning, match=f"moved to `modeling_icmoe.imaging.{name}`"):
        value = getattr(importlib.import_module(module), name)
    assert value is getattr(imaging, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(imaging, name)  # the new home does not warn
