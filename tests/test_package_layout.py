"""The package's layout (issue 22): a checkpoint saved before the medical toolkit moved still loads and computes what
it did, with the installed package and as remote code in a process without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskGeneration, SamModel

from modeling_icmoe import IcMoeSamModel, IcMoeSamSegmentationPipeline, load_icmoe_adapter
from remote_code import run_without_package

PRE_MOVE = Path(__file__).resolve().parent / "fixtures" / "pre_move_checkpoint"
# The recorded outputs were computed on one CPU with one thread; other thread counts may sum in another order.
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(PRE_MOVE / "expected.safetensors")


def _check_outputs(model, expected: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        outputs = model(pixel_values=expected["pixel_values"], input_boxes=expected["input_boxes"])
    torch.testing.assert_close(outputs.pred_masks, expected["pred_masks"], **TOLERANCE)
    torch.testing.assert_close(outputs.iou_scores, expected["iou_scores"], **TOLERANCE)


# ------------------------------------------------------------------------------ the checkpoint saved before the move
def test_pre_move_fixture_is_small_and_complete():
    files = {str(p.relative_to(PRE_MOVE)) for p in PRE_MOVE.rglob("*") if p.is_file()}
    assert {"expected.safetensors", "model/config.json", "model/model.safetensors", "model/modeling_icmoe_sam.py",
            "model/pipeline_icmoe_sam.py", "model/imaging.py", "adapter/icmoe_adapter_config.json",
            "adapter/icmoe_adapter_model.safetensors"} <= files
    assert sum(p.stat().st_size for p in PRE_MOVE.rglob("*") if p.is_file()) < 600_000


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForMaskGeneration])
def test_pre_move_checkpoint_loads_with_the_installed_package(expected, auto_class):
    model = auto_class.from_pretrained(PRE_MOVE / "model").eval()
    assert type(model) is IcMoeSamModel
    _check_outputs(model, expected)


def test_pre_move_adapter_loads_with_the_installed_package(expected):
    base = SamModel.from_pretrained(PRE_MOVE / "model")  # the full checkpoint's SAM weights are the adapter's base
    _check_outputs(load_icmoe_adapter(base, PRE_MOVE / "adapter"), expected)


def test_pre_move_checkpoint_in_the_installed_pipeline(expected):
    from transformers import SamProcessor

    model = AutoModel.from_pretrained(PRE_MOVE / "model").eval()
    segmenter = IcMoeSamSegmentationPipeline(model=model, processor=SamProcessor.from_pretrained(PRE_MOVE / "model"),
                                             device=-1)
    result = segmenter(expected["image"].numpy(), input_boxes=expected["image_boxes"].tolist())
    assert np.array_equal(result["masks"], expected["pipeline_masks"].numpy().astype(bool))
    np.testing.assert_allclose(result["scores"], expected["pipeline_scores"].numpy(), **TOLERANCE)


@pytest.mark.slow
def test_pre_move_checkpoint_as_remote_code_without_the_package(tmp_path):
    result = run_without_package(f"""
        import json
        import numpy as np
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForMaskGeneration, pipeline

        folder, expected = {str(PRE_MOVE / "model")!r}, load_file({str(PRE_MOVE / "expected.safetensors")!r})
        for auto_class in (AutoModel, AutoModelForMaskGeneration):
            model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                outputs = model(pixel_values=expected["pixel_values"], input_boxes=expected["input_boxes"])
            torch.testing.assert_close(outputs.pred_masks, expected["pred_masks"], **{TOLERANCE!r})
            torch.testing.assert_close(outputs.iou_scores, expected["iou_scores"], **{TOLERANCE!r})
        segmenter = pipeline("medical-mask-segmentation", model=folder, trust_remote_code=True, device=-1)
        result = segmenter(expected["image"].numpy(), input_boxes=expected["image_boxes"].tolist())
        assert np.array_equal(result["masks"], expected["pipeline_masks"].numpy().astype(bool))
        print("PIPELINE", type(segmenter).__module__, json.dumps(result["scores"].tolist()))
    """, tmp_path)
    line = next(line for line in result.stdout.splitlines() if line.startswith("PIPELINE"))
    module, scores = line.split(" ", 2)[1:]
    assert module.startswith("transformers_modules")
    np.testing.assert_allclose(json.loads(scores), load_file(PRE_MOVE / "expected.safetensors")["pipeline_scores"],
                               **TOLERANCE)
