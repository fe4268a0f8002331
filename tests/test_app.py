"""The interactive app without a browser: the annotation session (box and clicks give the pipeline's masks, prompt-free
slices and volumes give `segment_volume_without_prompts`' maps, propagation goes through `segment_volume`), the
overlay, the exports (PNG, NIfTI at the input's geometry, DICOM SEG), the refusals, the page's callbacks, the Space's
`app.py` and `requirements.txt`, and `icmoe-sam app`."""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from app_fixtures import save_app_models
from dicom_fixtures import write_ct_series
from modeling_icmoe import IcMoeSamSegmentationPipeline
from modeling_icmoe.medical.annotation import (
    OVERLAY_ALPHA,
    PALETTE,
    PROMPT_COLOURS,
    AnnotationSession,
    load_app_model,
    open_scan,
)
from modeling_icmoe.medical.propagation import SlicePoint
from modeling_icmoe.medical.volumes import (
    SlicePrompt,
    load_label_map,
    load_volume,
    segment_volume,
    segment_volume_without_prompts,
    to_stored_orientation,
)
from volume_fixtures import SHAPE, save_nifti, volume_arrays

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "training" / "data" / "mr_brain_lesion" / "images" / "mr_brain_lesion_000.png"
BOX = [40.0, 76.0, 72.0, 106.0]


@pytest.fixture(scope="module")
def app_models(tmp_path_factory):
    return save_app_models(tmp_path_factory.mktemp("app-models"))


@pytest.fixture(scope="module")
def prompted(app_models):
    return load_app_model(str(app_models["prompted"]), device="cpu")


@pytest.fixture(scope="module")
def prompt_free(app_models):
    return load_app_model(str(app_models["prompt_free"]), device="cpu")


@pytest.fixture(scope="module")
def nifti_path(tmp_path_factory):
    return save_nifti(volume_arrays()[0], tmp_path_factory.mktemp("volume") / "case.nii.gz")


def session_of(app_model, paths, tmp_path) -> AnnotationSession:
    return AnnotationSession(app_model, open_scan([str(p) for p in paths], app_model, tmp_path), tmp_path)


def draw_box(session: AnnotationSession, box, *, index: int = 0, label: int = 1) -> str:
    assert session.click(index, box[0], box[1], "box", label).startswith("Box corner")
    return session.click(index, box[2], box[3], "box", label)


# ------------------------------------------------------------------------------------------- prompted
@pytest.mark.parametrize("clicks, pipeline_prompts", [
    ([], {"input_boxes": [BOX]}),
    ([(56, 90, "positive point")], {"input_boxes": [BOX], "input_points": [[[56, 90]]], "input_labels": [[1]]}),
    ([(56, 90, "negative point"), (60, 92, "positive point")],
     {"input_boxes": [BOX], "input_points": [[[56, 90], [60, 92]]], "input_labels": [[0, 1]]}),
])
def test_a_box_and_clicks_give_the_pipelines_mask(prompted, tmp_path, clicks, pipeline_prompts):
    session = session_of(prompted, [IMAGE], tmp_path)
    status = draw_box(session, BOX)
    for x, y, mode in clicks:
        status = session.click(0, x, y, mode, 1)
    expected = IcMoeSamSegmentationPipeline(model=prompted.model, processor=prompted.processor)(
        str(IMAGE), **pipeline_prompts)["masks"][0]
    assert (session.labels == np.where(expected, 1, 0)).all()
    assert f"mask of {int(expected.sum())} pixels" in status


def test_one_click_without_a_box_keeps_the_best_of_three_masks(prompted, tmp_path):
    session = session_of(prompted, [IMAGE], tmp_path)
    session.click(0, 56, 90, "positive point", 2)
    expected = IcMoeSamSegmentationPipeline(model=prompted.model, processor=prompted.processor)(
        str(IMAGE), input_points=[56, 90], multimask_output=True)["masks"][0]
    assert (session.labels == np.where(expected, 2, 0)).all()


def test_the_class_segmented_last_paints_over_and_clear_removes_a_class(prompted, tmp_path):
    session = session_of(prompted, [IMAGE], tmp_path)
    draw_box(session, BOX, label=1)
    first = session.labels == 1
    draw_box(session, [20, 20, 90, 110], label=3)
    second = session.labels == 3
    assert second.any() and (session.labels[first & ~second] == 1).all()
    assert session.clear(0, 3) == "Cleared class 3 on slice 0."
    assert set(np.unique(session.labels)) <= {0, 1} and (0, 3) not in session.prompts and (0, 1) in session.prompts


def test_corner_clicks_of_an_empty_box_segment_nothing(prompted, tmp_path):
    session = session_of(prompted, [IMAGE], tmp_path)
    assert "empty box" in draw_box(session, [40, 70, 40, 90])
    assert not session.labels.any() and not session.prompts


def test_overlay_tints_the_masks_and_draws_the_prompts(prompted, tmp_path):
    session = session_of(prompted, [IMAGE], tmp_path)
    original = np.array(Image.open(IMAGE).convert("RGB"))
    draw_box(session, BOX)
    session.click(0, 56, 90, "negative point", 1)
    session.click(0, 10, 12, "box", 1)  # a pending corner of a new box
    shown = session.render(0, 1)
    mask = session.labels == 1
    away = np.ones(mask.shape, dtype=bool)  # away from the box's outline and the dots drawn over the tint
    away[70:112, 34:78] = away[4:21, 2:19] = False
    tinted = (1 - OVERLAY_ALPHA) * original + OVERLAY_ALPHA * PALETTE[0]
    assert (mask & away).any() and np.abs(shown[mask & away] - tinted[mask & away]).max() <= 0.5 + 1e-3
    assert (~mask & away).any() and (shown[~mask & away] == original[~mask & away]).all()
    assert (shown[76, 40:73] == PROMPT_COLOURS["box"]).all() and (shown[76:107, 72] == PROMPT_COLOURS["box"]).all()
    assert (shown[90, 56] == PROMPT_COLOURS[False]).all() and (shown[12, 10] == PROMPT_COLOURS["box"]).all()
    assert (session.render(0, 2)[90, 56] != PROMPT_COLOURS[False]).any()  # another class's prompts are not drawn


def test_png_export_of_an_image_holds_the_label_values_at_its_size(prompted, tmp_path):
    session = session_of(prompted, [IMAGE], tmp_path)
    draw_box(session, BOX, label=4)
    path = session.export("PNG (this slice)", 0)
    assert path.name == "mr_brain_lesion_000_labels.png"
    written = np.array(Image.open(path))
    assert written.shape == (128, 128) and written.dtype == np.uint8 and (written == session.labels).all()


def test_a_box_on_a_dicom_slice_exports_a_seg_on_the_series(prompted, tmp_path):
    series, _ = write_ct_series(tmp_path / "series")
    uploads = []
    for number, path in enumerate(sorted(series.iterdir())):  # an upload arrives one folder per file
        (tmp_path / f"upload{number}").mkdir()
        uploads.append(shutil.copy(path, tmp_path / f"upload{number}" / path.name))
    session = session_of(prompted, uploads, tmp_path)
    assert session.scan.is_dicom and session.scan.num_slices == 5
    draw_box(session, [50, 30, 90, 70], index=2, label=2)
    assert (session.labels == 2).any()
    seg = session.export("DICOM SEG", 2)
    assert seg.suffix == ".dcm"
    assert (load_label_map(seg, session.scan.volume).data == session.labels).all()


def test_a_box_on_a_volume_slice_is_segment_volumes_box_prompt(prompted, nifti_path, tmp_path):
    session = session_of(prompted, [nifti_path], tmp_path)
    draw_box(session, [6, 5, 16, 14], index=3, label=2)
    expected = segment_volume(prompted.model, prompted.processor, load_volume(nifti_path),
                              [SlicePrompt(3, 2, [6.0, 5.0, 16.0, 14.0])], axis=2, progress=False)
    assert (session.labels == expected).all() and (expected == 2).any()


def test_propagation_is_segment_volumes(prompted, nifti_path, tmp_path):
    session = session_of(prompted, [nifti_path], tmp_path)
    draw_box(session, [6, 5, 16, 14], index=3)
    session.click(3, 10, 9, "positive point", 1)
    assert session.propagate().startswith("Propagated")
    expected = segment_volume(prompted.model, prompted.processor, load_volume(nifti_path),
                              [SlicePrompt(3, 1, [6.0, 5.0, 16.0, 14.0])], axis=2, propagate=True,
                              points=[SlicePoint(3, 1, [10.0, 9.0], True)], progress=False)
    assert (session.labels == expected).all()
    session.click(4, 12, 10, "negative point", 1)  # a correction on another slice, then propagation again
    session.propagate()
    expected = segment_volume(prompted.model, prompted.processor, load_volume(nifti_path),
                              [SlicePrompt(3, 1, [6.0, 5.0, 16.0, 14.0])], axis=2, propagate=True,
                              points=[SlicePoint(3, 1, [10.0, 9.0], True), SlicePoint(4, 1, [12.0, 10.0], False)],
                              progress=False)
    assert (session.labels == expected).all()


def test_propagation_refusals(prompted, nifti_path, tmp_path):
    with pytest.raises(ValueError, match="2-D image has one slice"):
        session_of(prompted, [IMAGE], tmp_path).propagate()
    with pytest.raises(ValueError, match="Draw a box on a key slice first"):
        session_of(prompted, [nifti_path], tmp_path).propagate()
    session = session_of(prompted, [nifti_path], tmp_path)
    session.click(3, 10, 9, "positive point", 2)  # a class with clicks and no key box
    draw_box(session, [6, 5, 16, 14], index=3)
    with pytest.raises(ValueError, match="class 2"):
        session.propagate()


# ------------------------------------------------------------------------------------------ prompt-free
def test_segment_everything_on_a_slice_and_a_volume_is_the_volume_paths(prompt_free, nifti_path, tmp_path):
    session = session_of(prompt_free, [nifti_path], tmp_path)
    expected = segment_volume_without_prompts(prompt_free.model, prompt_free.processor, load_volume(nifti_path),
                                              axis=2, progress=False)
    assert session.segment_everything(3).startswith("Segmented slice 3; classes found:")
    assert (session.labels[..., 3] == expected[..., 3]).all() and not session.labels[..., :3].any()
    assert session.segment_everything(3, whole_volume=True).startswith("Segmented all 6 slices")
    assert (session.labels == expected).all() and len(np.unique(expected)) > 1
    written = nib.load(session.export("NIfTI", 0))  # the input's shape, affine and orientation
    assert written.shape == SHAPE and np.allclose(written.affine, nib.load(nifti_path).affine)
    assert (np.asarray(written.dataobj) == to_stored_orientation(expected, session.scan.volume)).all()


def test_a_prompt_free_slice_is_written_in_the_models_label_values(prompt_free, tmp_path):
    prompt_free.label_values = [0, 5, 6, 7]  # as a model trained on --label_ids 5 6 7 records them
    try:
        session = session_of(prompt_free, [IMAGE], tmp_path)
        session.segment_everything(0)
        assert set(np.unique(session.labels)) <= {0, 5, 6, 7}
    finally:
        prompt_free.label_values = [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("kind, action, message", [
    ("prompt_free", lambda s: s.click(0, 5, 5, "box", 1), "segments without prompts"),
    ("prompted", lambda s: s.segment_everything(0), "needs prompts"),
    ("prompted", lambda s: s.click(0, 5, 5, "scribble", 1), "Unknown click mode"),
    ("prompted", lambda s: s.click(0, 5, 5, "box", 0), "label value > 0"),
    ("prompted", lambda s: s.click(0, 5, 5, "box", None), "Choose a class"),
    ("prompted", lambda s: s.click(1, 5, 5, "box", 1), "Slice 1 is outside 0..0"),
    ("prompted", lambda s: s.export("NIfTI", 0), "2-D image's result is a PNG"),
    ("prompted", lambda s: s.export("JPEG", 0), "Unknown format"),
])
def test_refusals_name_the_problem(prompted, prompt_free, tmp_path, kind, action, message):
    session = session_of(prompted if kind == "prompted" else prompt_free, [IMAGE], tmp_path)
    with pytest.raises(ValueError, match=message):
        action(session)


def test_files_that_are_not_one_image_volume_or_series_are_refused(prompted, nifti_path, tmp_path):
    with pytest.raises(ValueError, match="Cannot open"):
        open_scan([IMAGE, IMAGE], prompted, tmp_path)
    with pytest.raises(ValueError, match="Open an image"):
        open_scan([], prompted, tmp_path)
    session = session_of(prompted, [nifti_path], tmp_path)
    with pytest.raises(ValueError, match="references a DICOM series"):
        session.export("DICOM SEG", 0)


# ------------------------------------------------------------------------------------ the page's callbacks
def test_callbacks_open_click_and_export_as_the_page_calls_them(prompted, prompt_free, nifti_path, tmp_path):
    gr = pytest.importorskip("gradio")
    from modeling_icmoe.medical.app import build_app, on_click, on_everything, on_export, on_open, on_show

    session, shown, slider, propagate, volume_button, status = on_open(prompted, str(tmp_path), [str(IMAGE)], 1)
    assert status == "Opened mr_brain_lesion_000: an image of 128 x 128 pixels." and shown.shape == (512, 512, 3)
    assert (shown[::4, ::4] == session.render(0, 1)).all()  # enlarged 4 times, each pixel a 4 x 4 block
    assert slider["visible"] is False and propagate["visible"] is False
    for x, y in (BOX[:2], BOX[2:]):  # clicks on the enlarged slice, at the pixels' last rows and columns
        shown, status = on_click(session, 0, "box", 1, gr.SelectData(None, {"index": [4 * x + 3, 4 * y + 3],
                                                                            "value": None}))
    assert "mask of" in status and session.prompts[0, 1].box == BOX and (on_show(session, 0, 1) == shown).all()
    path, status = on_export(session, 0, "PNG (this slice)")
    assert Path(path).is_file() and status == "Wrote mr_brain_lesion_000_labels.png."
    assert on_export(session, 0, "NIfTI")[1].startswith("Cannot export: A 2-D image")

    session, shown, slider, propagate, volume_button, status = on_open(prompt_free, str(tmp_path), [str(nifti_path)], None)
    assert status == "Opened case: a volume of 6 slices of 24 x 28 pixels." and slider["value"] == 3
    assert slider["maximum"] == 5 and volume_button["visible"] is True and propagate["visible"] is False
    shown, status = on_everything(True, session, 3, 1)
    assert status.startswith("Segmented all 6 slices") and shown.shape == (28 * 18, 24 * 18, 3)
    assert on_open(prompted, str(tmp_path), [str(tmp_path / "notes.txt")], 1)[-1].startswith("Cannot open")
    assert on_click(None, 0, "box", 1, gr.SelectData(None, {"index": [1, 1], "value": None})) == (
        None, "Open an image first.")
    assert isinstance(build_app(prompted), gr.Blocks) and isinstance(build_app(prompt_free), gr.Blocks)


# ------------------------------------------------------------------------------ the Space and the command
def test_the_space_app_builds_for_the_model_in_its_variable(app_models, monkeypatch):
    gr = pytest.importorskip("gradio")
    monkeypatch.setenv("ICMOE_SAM_MODEL", str(app_models["prompt_free"]))
    space = runpy.run_path(str(REPO / "app.py"))  # not as __main__: built, not served
    assert isinstance(space["demo"], gr.Blocks) and space["model"] == str(app_models["prompt_free"])
    assert (space["BUNDLED_MODEL"] / "config.json").is_file()  # the default without the variable


def test_the_spaces_requirements_are_the_packages_with_volumes_and_app():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    expected = [*project["dependencies"], *(r for r in extras["volumes"]), *(r for r in extras["app"]
                                                                              if not r.startswith("icmoe-sam"))]
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line and not line.startswith("#")] == expected


def test_icmoe_sam_app_serves_the_model_it_is_given(monkeypatch):
    from modeling_icmoe.medical import app as app_module
    from modeling_icmoe.medical.cli import main

    calls = []
    monkeypatch.setattr(app_module, "launch_app", lambda model, **options: calls.append((model, options)))
    assert main(["app", "--model", "outputs/spleen", "--port", "7999", "--window", "40", "400"]) == 0
    assert calls == [("outputs/spleen", {"host": "127.0.0.1", "port": 7999, "device": None, "window": ["40", "400"],
                                         "slice_axis": None})]


@pytest.mark.slow
def test_the_package_and_the_models_remote_code_leave_the_app_out(app_models):
    imported = subprocess.run([sys.executable, "-c", "import sys, modeling_icmoe; print('gradio' in sys.modules)"],
                              cwd=REPO, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"
    for folder in app_models.values():
        assert not {"app.py", "annotation.py", "cli.py"} & {path.name for path in folder.iterdir()}


def test_icmoe_sam_app_without_gradio_says_which_extra_to_install(monkeypatch, capsys):
    from modeling_icmoe.medical.cli import main

    monkeypatch.delitem(sys.modules, "modeling_icmoe.medical.app", raising=False)
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    assert main(["app", "--model", "outputs/spleen"]) == 2
    assert 'needs Gradio: pip install "icmoe-sam[app]"' in capsys.readouterr().err
