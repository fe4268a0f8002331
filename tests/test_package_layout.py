"""The package's layout (issue 22): the medical toolkit lives in `modeling_icmoe.medical`, its old import paths
keep working for a release with a warning, the command points at the new place, and a checkpoint saved before the
move still loads and computes what it did, with the installed package and as remote code in a process without it."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskGeneration, SamModel

from helpers import child_env
from modeling_icmoe import IcMoeSamModel, IcMoeSamSegmentationPipeline, load_icmoe_adapter
from modeling_icmoe._moved import MOVED_MODULES
from remote_code import run_without_package

REPO = Path(__file__).resolve().parents[1]
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


def _new_module(new: str):
    if new.endswith(".app"):
        pytest.importorskip("gradio")
    return importlib.import_module(new)


# ------------------------------------------------------------------------------------------------ the old paths
def test_every_module_of_the_toolkit_moved():
    assert sorted(MOVED_MODULES) == [f"modeling_icmoe.{name}" for name in (
        "annotation", "app", "cli", "dicom", "export", "propagation", "volume_metrics", "volumes")]
    for old, new in MOVED_MODULES.items():
        assert new == old.replace("modeling_icmoe.", "modeling_icmoe.medical.")
        assert (REPO / (new.replace(".", "/") + ".py")).is_file()


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_MODULES.items()))
def test_old_paths_give_the_same_objects_with_a_warning(old, new):
    module = _new_module(new)
    names = [name for name in vars(module) if not name.startswith("__")]
    assert any(not name.startswith("_") for name in names)
    shim = importlib.import_module(old)
    for name in names:
        with pytest.warns(DeprecationWarning, match=rf"`{old}\.{name}` moved to `{new}\.{name}`"):
            value = getattr(shim, name)
        assert value is getattr(module, name), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in names:
            getattr(module, name)  # the new home does not warn


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_paths_know_no_other_names(old):
    _new_module(MOVED_MODULES[old])
    shim = importlib.import_module(old)
    with pytest.raises(AttributeError, match=f"module '{old}' has no attribute 'NOT_A_NAME'"):
        shim.NOT_A_NAME  # noqa: B018
    with pytest.raises(AttributeError):
        shim.__wrapped__  # noqa: B018  (tools probe dunders: they are not forwarded)


def test_old_import_statements_work_with_a_warning():
    from modeling_icmoe.medical import annotation, cli, dicom, propagation, volume_metrics, volumes

    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.volumes.load_volume`"):
        from modeling_icmoe.volumes import load_volume
    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.cli.main`"):
        from modeling_icmoe.cli import main
    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.dicom.load_dicom_series`"):
        from modeling_icmoe.dicom import load_dicom_series
    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.propagation.SlicePoint`"):
        from modeling_icmoe.propagation import SlicePoint
    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.volume_metrics.score_volume`"):
        from modeling_icmoe.volume_metrics import score_volume
    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.annotation.AnnotationSession`"):
        from modeling_icmoe.annotation import AnnotationSession
    assert (load_volume, main, load_dicom_series, SlicePoint, score_volume, AnnotationSession) == (
        volumes.load_volume, cli.main, dicom.load_dicom_series, propagation.SlicePoint, volume_metrics.score_volume,
        annotation.AnnotationSession)


def test_mask_box_of_the_old_volumes_path_still_comes_from_imaging():
    from modeling_icmoe import imaging

    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.imaging.mask_box`") as caught:
        from modeling_icmoe.volumes import mask_box
    assert mask_box is imaging.mask_box
    assert len([w for w in caught if issubclass(w.category, DeprecationWarning)]) == 1  # one warning, the right one


# --------------------------------------------------------------------------------- the command and the package
def test_the_console_script_and_packages_point_at_the_new_place():
    from setuptools import find_packages

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = project["project"]["scripts"]["icmoe-sam"]
    assert target == "modeling_icmoe.medical.cli:main"
    module, name = target.split(":")
    assert getattr(importlib.import_module(module), name).__module__ == "modeling_icmoe.medical.cli"
    packages = find_packages(str(REPO), **project["tool"]["setuptools"]["packages"]["find"])
    assert {"modeling_icmoe", "modeling_icmoe.medical"} <= set(packages)


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize("module", ["modeling_icmoe.medical.cli", "modeling_icmoe.cli"])
def test_python_dash_m_runs_the_command(module):
    result = subprocess.run([sys.executable, "-m", module, "predict", "--help"], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--prompt_labels" in result.stdout
    moved = "`python -m modeling_icmoe.cli` moved to `python -m modeling_icmoe.medical.cli`"
    assert (moved in result.stderr) == (module == "modeling_icmoe.cli"), result.stderr[-3000:]


@pytest.mark.slow  # builds a wheel
def test_the_wheel_holds_the_subpackage_and_the_command(tmp_path):
    import shutil
    import zipfile

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "modeling_icmoe", source / "modeling_icmoe", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True, timeout=300,
                   env=child_env())
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {f"modeling_icmoe/medical/{name}.py" for name in ("__init__", "volumes", "dicom", "cli", "app")} <= names
    assert {"modeling_icmoe/volumes.py", "modeling_icmoe/_moved.py", "modeling_icmoe/imaging.py"} <= names
    assert "icmoe-sam = modeling_icmoe.medical.cli:main" in entry_points


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
