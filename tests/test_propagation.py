"""Propagation of key-slice boxes through a volume and corrective clicks (`segment_volume(..., propagate=True)`,
`icmoe-sam predict --propagate --points`): where it goes and stops, how two key slices meet, what clicks change, the
errors for bad prompts, and the command end to end.

The behaviour tests use an idealised model with SAM's interface (`ThresholdSam`: a prompt selects the bright pixels
inside its box, a positive click adds the bright pixels near it, a negative click removes the pixels near it), so that
the right answer is known slice by slice; the plumbing tests use a real tiny `IcMoeSamModel`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from transformers import SamProcessor

from modeling_icmoe.imaging import mask_box
from modeling_icmoe.medical.propagation import (
    PropagationSettings,
    SliceEmbeddings,
    SlicePoint,
    check_key_prompts,
    points_from_entries,
)
from modeling_icmoe.medical.volumes import (
    SlicePrompt,
    load_nifti,
    prompts_from_boxes,
    segment_volume,
    to_uint8_volume,
)

REPO = Path(__file__).resolve().parents[1]
SHAPE = (64, 64, 20)  # canonical (RAS) on disk: the identity orientation, 2.5 mm slices; the tiny SAM's input size
AFFINE = np.diag([1.0, 1.0, 2.5, 1.0])
WINDOW = (150.0, 300.0)  # background (0 HU) to 0, objects (300 HU) to 255
NEAR = 6.0  # pixels: the reach of a click of ThresholdSam


class ThresholdSam(torch.nn.Module):
    """SAM's interface with a known answer: the embedding of a slice is its normalised image; a box selects the bright
    pixels inside it, positive clicks add the bright pixels within `NEAR` of them, negative clicks remove the pixels
    within `NEAR`. The predicted IoU is 1 for a non-empty mask, 0 for an empty one. `calls` counts the prompts decoded."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[int] = []

    @property
    def device(self):
        return self.anchor.device

    @property
    def dtype(self):
        return self.anchor.dtype

    def get_image_embeddings(self, pixel_values):
        return pixel_values.mean(dim=1, keepdim=True)  # (B, 1, S, S)

    def forward(self, image_embeddings, input_boxes=None, input_points=None, input_labels=None, input_masks=None,
                multimask_output=False):
        count, _, size, _ = image_embeddings.shape
        self.calls.append(count)
        bright = image_embeddings[:, 0] > 0  # (B, S, S)
        rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        masks = torch.zeros_like(bright)
        for n in range(count):
            if input_boxes is not None:
                x0, y0, x1, y1 = input_boxes[n, 0].tolist()
                masks[n] = bright[n] & (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
            if input_points is not None:
                for (x, y), label in zip(input_points[n, 0].tolist(), input_labels[n, 0].tolist()):
                    near = (cols - x) ** 2 + (rows - y) ** 2 < NEAR**2
                    masks[n] = masks[n] | (bright[n] & near) if label == 1 else masks[n] & ~near
        logits = torch.where(masks, 10.0, -10.0)[:, None, None]  # (B, 1, 1, S, S)
        scores = masks.flatten(1).any(1).float()[:, None, None]  # (B, 1, 1)
        return SimpleNamespace(pred_masks=logits, iou_scores=scores)


def ellipsoid(centre, radii) -> np.ndarray:
    grid = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def write_volume(folder: Path, objects: dict[int, np.ndarray], seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """A CT-like NIfTI (objects at 300 HU on noise around 0 HU) and its label map."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    for label, mask in objects.items():
        labels[mask] = label
    image = (rng.normal(0.0, 10.0, SHAPE) + 300.0 * (labels > 0)).astype(np.int16)
    paths = []
    for name, array in (("ct.nii.gz", image), ("labels.nii.gz", labels)):
        nifti = nib.Nifti1Image(array, AFFINE)
        nifti.header.set_qform(AFFINE, code=1)
        nib.save(nifti, str(folder / name))
        paths.append(folder / name)
    return paths[0], paths[1], labels


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from conftest import save_tiny_base

    return SamProcessor.from_pretrained(save_tiny_base(tmp_path_factory.mktemp("tiny-sam-propagation")))


@pytest.fixture
def two_organs(tmp_path):
    """Class 1, an ellipsoid over slices 4..14 (largest at 9); class 2, a smaller one over slices 11..17."""
    first = ellipsoid((15, 15, 9), (8, 9, 5.6))
    second = ellipsoid((29, 29, 14), (5, 5, 3.5)) & ~first
    image, label, labels = write_volume(tmp_path, {1: first, 2: second})
    return load_nifti(image), labels, image, label


def key_box(labels: np.ndarray, label: int, index: int, source: str = "") -> SlicePrompt:
    return SlicePrompt(index, label, mask_box(labels[:, :, index] == label), source)


def propagate(model, processor, volume, prompts, points=(), **settings):
    """Propagation without the area stop unless asked: the idealised model's masks end with the objects."""
    settings = {"min_area_ratio": 0.0, **settings}
    return segment_volume(model, processor, volume, prompts, axis=2, window=WINDOW, progress=False, propagate=True,
                          points=points, propagation=PropagationSettings(**settings))


def present(labels: np.ndarray, label: int) -> list[int]:
    return np.flatnonzero((labels == label).any(axis=(0, 1))).tolist()


def test_one_key_box_per_class_reaches_each_object_end_and_stops(two_organs, processor):
    volume, labels, _, _ = two_organs
    assert present(labels, 1) == list(range(4, 15)) and present(labels, 2) == list(range(11, 18))
    model = ThresholdSam()
    predicted = propagate(model, processor, volume, [key_box(labels, 1, 9), key_box(labels, 2, 14)], box_margin=0.1)
    # Both directions, every slice of each object, and nothing beyond its ends (the idealised model's masks are the
    # objects wherever the box still holds them).
    assert np.array_equal(predicted, labels)
    # One decoder pass per step, all classes and directions together: the longest run is class 1's five slices down,
    # plus the anchors' pass; one more pass for each run's first empty slice.
    assert len(model.calls) == 1 + 6 and model.calls[0] == 2 and max(model.calls) == 4


def test_stop_thresholds_on_score_and_area(two_organs, processor):
    volume, labels, _, _ = two_organs
    model = ThresholdSam()
    only_key = propagate(model, processor, volume, [key_box(labels, 1, 9)], min_score=2.0)
    assert present(only_key, 1) == [9]
    areas = (labels == 1).sum(axis=(0, 1))
    by_area = propagate(model, processor, volume, [key_box(labels, 1, 9)], min_area_ratio=0.5)
    assert present(by_area, 1) == np.flatnonzero(areas >= 0.5 * areas[9]).tolist()
    assert len(present(by_area, 1)) < len(present(labels, 1))


def test_two_key_slices_meet_half_way(tmp_path, processor):
    """A column over slices 2..17; key slices 4 (a box on the whole object) and 12 (a box on its left half only): each
    slice comes from the nearer key slice, a tie (slice 8) from the lower one, and every slice is decoded once."""
    column = ellipsoid((20, 20, 10), (9, 9, 1e9)) & (np.arange(SHAPE[2]) >= 2) & (np.arange(SHAPE[2]) <= 17)
    image, _, labels = write_volume(tmp_path, {1: column})
    volume = load_nifti(image)
    left_half = SlicePrompt(12, 1, [0.0, 0.0, 19.0, 63.0])  # x (columns) up to 19: the left half
    model = ThresholdSam()
    predicted = propagate(model, processor, volume, [key_box(labels, 1, 4), left_half], box_margin=0.0)
    full, half = labels == 1, (labels == 1) & (np.arange(SHAPE[1])[None, :, None] <= 19)
    for index in range(SHAPE[2]):
        expected = full if index <= 8 else half
        assert np.array_equal(predicted[:, :, index] == 1, expected[:, :, index]), index
    assert sum(model.calls) == len(present(labels, 1)) + 2  # + one empty slice past each end


def test_points_refine_their_slice_and_propagation_reruns_from_it(tmp_path, processor):
    """A column over slices 4..14, key slice 9, a negative click on slice 11."""
    column = ellipsoid((20, 20, 9), (9, 9, 1e9)) & (np.arange(SHAPE[2]) >= 4) & (np.arange(SHAPE[2]) <= 14)
    image, _, labels = write_volume(tmp_path, {1: column})
    volume = load_nifti(image)
    prompts = [key_box(labels, 1, 9)]
    model = ThresholdSam()
    before = propagate(model, processor, volume, prompts, box_margin=0.0)
    calls_before = sum(model.calls)
    # A negative click on slice 11 at the object's right edge: that slice loses the pixels near the click, and the
    # slices beyond it follow the smaller mask; slices nearer the key slice (10, and 9 itself) do not change.
    rows, cols = np.nonzero(labels[:, :, 11] == 1)
    click = SlicePoint(11, 1, [float(cols.max()), float(rows[np.argmax(cols)])], positive=False)
    model.calls.clear()
    after = propagate(model, processor, volume, prompts, [click], box_margin=0.0)
    assert np.array_equal(after[:, :, :11], before[:, :, :11])
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    near = (xx - click.point[0]) ** 2 + (yy - click.point[1]) ** 2 < NEAR**2
    assert (before[:, :, 11] == 1)[near].any() and not (after[:, :, 11] == 1)[near].any()
    assert (after[:, :, 11] == 1).sum() < (before[:, :, 11] == 1).sum()
    assert (after[:, :, 12:] == 1).sum() < (before[:, :, 12:] == 1).sum()
    # The rerun decodes only what the click touches: slice 11 with the click, the run from 11 up (12, 13, 14 and the
    # empty 15), and the run from 9 up, now ending at 10; the run from 9 down is reused.
    assert sum(model.calls) - calls_before == 1 + 4 + 1


def test_a_positive_click_past_the_stop_restarts_propagation(tmp_path, processor):
    """Two pieces of class 1 with empty slices between: the key box finds one; a positive click on the other, where
    propagation had stopped (no box reached it), finds the second piece, which then propagates."""
    lower, upper = ellipsoid((20, 20, 4), (5, 5, 2.6)), ellipsoid((20, 20, 14), (5, 5, 2.6))
    image, _, labels = write_volume(tmp_path, {1: lower | upper})
    volume = load_nifti(image)
    model = ThresholdSam()
    without = propagate(model, processor, volume, [key_box(labels, 1, 4)])
    assert present(without, 1) == present(lower.astype(np.uint8), 1)
    rows, cols = np.nonzero(labels[:, :, 14] == 1)
    click = SlicePoint(14, 1, [20.0, 20.0])  # the piece's centre: within `NEAR` of all of it
    with_click = propagate(model, processor, volume, [key_box(labels, 1, 4)], [click])
    assert present(with_click, 1) == present(labels, 1)
    assert np.array_equal(with_click == 1, labels == 1)


@pytest.fixture(scope="module")
def icmoe_dir(tmp_path_factory):
    from conftest import save_tiny_base

    from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamModel

    base = save_tiny_base(tmp_path_factory.mktemp("tiny-base"))
    folder = tmp_path_factory.mktemp("tiny-icmoe")
    IcMoeSamModel.from_pretrained(base, icmoe_config=IcMoeAdapterConfig(expert_rank=4)).save_pretrained(folder)
    SamProcessor.from_pretrained(base).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("prompt_use", ["box", "box+mask", "box+point"])
def test_a_real_model_takes_every_prompt_use(two_organs, icmoe_dir, prompt_use):
    from modeling_icmoe.medical.cli import load_model

    volume, labels, _, _ = two_organs
    model, processor = load_model(str(icmoe_dir), "cpu")
    prompts = [key_box(labels, 1, 9), key_box(labels, 2, 14)]
    settings = PropagationSettings(prompt_use=prompt_use, min_score=0.0)
    embeddings = SliceEmbeddings(model, processor, to_uint8_volume(volume, window=WINDOW), axis=2, slices_per_batch=3)
    predicted = segment_volume(model, processor, volume, prompts, axis=2, progress=False, propagate=True,
                               propagation=settings, embeddings=embeddings)
    assert predicted.shape == volume.shape and set(np.unique(predicted)) <= {0, 1, 2}
    # A key slice's mask is the one per-slice prompting gives for the same box (the same decoder call, alone).
    per_slice = segment_volume(model, processor, volume, prompts, axis=2, window=WINDOW, progress=False)
    for prompt in prompts:
        assert np.array_equal(predicted[:, :, prompt.index] == prompt.label,
                              per_slice[:, :, prompt.index] == prompt.label)
    # The embeddings are reused for a click, which changes its slice.
    encoded = dict(embeddings.cache)
    clicked = segment_volume(model, processor, volume, prompts, axis=2, progress=False, propagate=True,
                             points=[SlicePoint(9, 1, [5.0, 5.0], positive=True)], propagation=settings,
                             embeddings=embeddings)
    assert all(embeddings.cache[index] is tensor for index, tensor in encoded.items())
    assert not np.array_equal(clicked[:, :, 9], predicted[:, :, 9])


BAD_ENTRIES = [
    ("boxes", [{"slice": 99, "label": 1, "box": [1, 1, 5, 5]}], r"KEY\.json: Box entry 0: class 1, slice 99: the key slice is outside the volume's slices 0\.\.19"),
    ("boxes", [{"slice": -1, "label": 1, "box": [1, 1, 5, 5]}], r"KEY\.json: Box entry 0: class 1, slice -1: the key slice is outside"),
    ("boxes", [{"slice": 3, "label": 1, "box": [1, 1, 70, 5]}], r"KEY\.json: Box entry 0: class 1, slice 3: box \[1\.0, 1\.0, 70\.0, 5\.0\] reaches outside the slice \(64 x 64 pixels"),
    ("boxes", [{"slice": 3, "label": 1, "box": [9, 1, 5, 5]}], r"KEY\.json: Box entry 0: class 1, slice 3: box must be \[x0, y0, x1, y1\] with x0 <= x1 and y0 <= y1, got \[9\.0, 1\.0, 5\.0, 5\.0\]"),
    ("boxes", [{"slice": 3, "label": 2, "box": [1, 1, 5, 5]}, {"slice": 3, "label": 2, "box": [2, 2, 6, 6]}],
     r"KEY\.json: Box entry 1: class 2, slice 3: a second box for this class on this slice \(\[1\.0, 1\.0, 5\.0, 5\.0\] from KEY\.json: Box entry 0\)"),
    ("boxes", [{"slice": 3, "label": 1}], r"KEY\.json: Box entry 0 must be \{'slice': int, 'label': int, 'box': \[x0, y0, x1, y1\]\}"),
    ("boxes", [{"slice": 3, "label": 1, "box": [1, 1, 5, 5], "note": "x"}], r"KEY\.json: Box entry 0 must be"),
    ("boxes", [{"slice": "3", "label": 1, "box": [1, 1, 5, 5]}], r"KEY\.json: Box entry 0: 'slice' must be an integer, got '3'"),
    ("boxes", [{"slice": 3.5, "label": 1, "box": [1, 1, 5, 5]}], r"KEY\.json: Box entry 0: 'slice' must be an integer"),
    ("boxes", [{"slice": 3, "label": True, "box": [1, 1, 5, 5]}], r"KEY\.json: Box entry 0: 'label' must be an integer, got True"),
    ("boxes", [{"slice": 3, "label": 0, "box": [1, 1, 5, 5]}], r"KEY\.json: Box entry 0: class 0, slice 3: labels are > 0"),
    ("boxes", [{"slice": 3, "label": 1, "box": [1, 1, 5]}], r"KEY\.json: Box entry 0: class 1, slice 3: 'box' must be \[x0, y0, x1, y1\]"),
    ("boxes", [{"slice": 3, "label": 1, "box": [1, 1, 5, float("nan")]}], r"KEY\.json: Box entry 0: class 1, slice 3: 'box' must be a finite number"),
    ("boxes", [[3, 1, [1, 1, 5, 5]]], r"KEY\.json: Box entry 0 must be \{"),
    ("boxes", {"slice": 3}, r"KEY\.json: expected a list of box entries, got dict"),
    ("points", [{"slice": 30, "label": 1, "point": [3, 3], "positive": True}], r"POINTS\.json: Point entry 0: class 1, slice 30: the point's slice is outside"),
    ("points", [{"slice": 9, "label": 1, "point": [3, 64.5], "positive": True}], r"POINTS\.json: Point entry 0: class 1, slice 9: point \[3\.0, 64\.5\] lies outside the slice \(64 x 64 pixels\)"),
    ("points", [{"slice": 9, "label": 1, "point": [3, 3], "positive": "yes"}], r"POINTS\.json: Point entry 0: class 1, slice 9: 'positive' must be true or false"),
    ("points", [{"slice": 9, "label": 1, "point": [3, 3]}], r"POINTS\.json: Point entry 0 must be \{'slice': int, 'label': int, 'point': \[x, y\], 'positive': bool\}"),
    ("points", [{"slice": 9, "label": 1, "point": [3], "positive": True}], r"POINTS\.json: Point entry 0: class 1, slice 9: 'point' must be \[x, y\]"),
    ("points", [{"slice": 9, "label": 3, "point": [3, 3], "positive": True}], r"POINTS\.json: Point entry 0: class 3, slice 9: a point for a class with no key box.*classes with one: \[1, 2\]"),
    ("points", [{"slice": 9, "label": 1, "point": [3, 3], "positive": True}, {"slice": 9, "label": 1, "point": [3, 3], "positive": True}],
     r"POINTS\.json: Point entry 1: class 1, slice 9: point \[3\.0, 3\.0\] repeats POINTS\.json: Point entry 0"),
    ("points", [{"slice": 9, "label": 1, "point": [3, 3], "positive": True}, {"slice": 9, "label": 1, "point": [3, 3], "positive": False}],
     r"POINTS\.json: Point entry 1: class 1, slice 9: point \[3\.0, 3\.0\] contradicts POINTS\.json: Point entry 0"),
]


@pytest.mark.parametrize("kind, entries, message", BAD_ENTRIES)
def test_bad_prompts_are_named_by_file_class_and_slice(two_organs, kind, entries, message):
    volume = two_organs[0]
    good = [{"slice": 9, "label": 1, "box": [5, 5, 20, 20]}, {"slice": 14, "label": 2, "box": [25, 25, 33, 33]}]
    with pytest.raises(ValueError, match=message):
        if kind == "boxes":
            prompts_from_boxes(entries, volume, 2, source="KEY.json")
        else:
            points = points_from_entries(entries, volume, 2, source="POINTS.json")
            check_key_prompts(prompts_from_boxes(good, volume, 2, source="KEY.json"), points, num_slices=20,
                              slice_shape=(64, 64))


def test_the_python_api_checks_prompts_too(two_organs, processor):
    volume, labels, _, _ = two_organs
    model = ThresholdSam()
    with pytest.raises(ValueError, match="Points refine a propagated class: pass propagate=True"):
        segment_volume(model, processor, volume, [key_box(labels, 1, 9)], axis=2, points=[SlicePoint(9, 1, [3, 3])])
    with pytest.raises(ValueError, match="class 2, slice 9: a point for a class with no key box"):
        propagate(model, processor, volume, [key_box(labels, 1, 9)], [SlicePoint(9, 2, [3.0, 3.0])])
    with pytest.raises(ValueError, match="class 1, slice 25: the key slice is outside"):
        propagate(model, processor, volume, [SlicePrompt(25, 1, [1.0, 1.0, 5.0, 5.0])])
    with pytest.raises(ValueError, match="prompt_use must be one of"):
        PropagationSettings(prompt_use="mask")
    with pytest.raises(ValueError, match="min_score must be a finite number >= 0"):
        PropagationSettings(min_score=-1)
    assert not model.calls  # every check comes before the model


def _predict(arguments: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "modeling_icmoe.medical.cli", "predict", *arguments], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.slow  # subprocesses
def test_predict_propagate_end_to_end(tmp_path, two_organs, icmoe_dir):
    from modeling_icmoe.medical.cli import load_model

    volume, labels, image, label = two_organs
    key = [{"slice": 9, "label": 1, "box": key_box(labels, 1, 9).box}, {"slice": 14, "label": 2,
                                                                        "box": key_box(labels, 2, 14).box}]
    clicks = [{"slice": 11, "label": 1, "point": [14.0, 15.0], "positive": True}]
    (tmp_path / "key.json").write_text(json.dumps(key))
    (tmp_path / "points.json").write_text(json.dumps(clicks))
    output = tmp_path / "pred.nii.gz"
    # A model whose training record says it was trained on sagittal slices, asked for axial ones: a warning.
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for file in icmoe_dir.iterdir():
        (model_dir / file.name).symlink_to(file)
    (model_dir / "eval_results.json").write_text(json.dumps({"volume_data": {"slice_axis": "sagittal"}}))
    common = ["--model", str(model_dir), "--input", str(image), "--window", "150", "300", "--device", "cpu",
              "--slice_axis", "axial"]
    result = _predict([*common, "--output", str(output), "--boxes", str(tmp_path / "key.json"), "--propagate",
                       "--points", str(tmp_path / "points.json"), "--reference", str(label), "--batch_size", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "key boxes and 1 points propagated" in result.stdout
    assert "Warning: --slice_axis axial (canonical axis 2) is not the axis --model" in result.stderr
    saved, source = nib.load(str(output)), nib.load(str(image))
    assert saved.shape == source.shape and np.allclose(saved.affine, source.affine)
    # The command's label map is the Python API's for the same prompts and settings.
    model, processor = load_model(str(icmoe_dir), "cpu")
    expected = segment_volume(model, processor, volume, prompts_from_boxes(key, volume, 2), axis=2, window=WINDOW,
                              progress=False, propagate=True, points=points_from_entries(clicks, volume, 2))
    assert np.array_equal(np.asarray(saved.dataobj), expected)
    assert json.loads((tmp_path / "pred.nii.gz.metrics.json").read_text())["per_class"].keys() <= {"1", "2"}

    bad_points = tmp_path / "bad_points.json"
    bad_points.write_text(json.dumps([{"slice": 11, "label": 4, "point": [3, 3], "positive": True}]))
    refused = _predict([*common, "--output", str(output), "--boxes", str(tmp_path / "key.json"), "--propagate",
                        "--points", str(bad_points)])
    assert refused.returncode == 2
    assert f"{bad_points}: Point entry 0: class 4, slice 11: a point for a class with no key box" in refused.stderr
    bad_key = tmp_path / "bad_key.json"
    bad_key.write_text(json.dumps([{"slice": 20, "label": 1, "box": [1, 1, 5, 5]}]))
    refused = _predict([*common, "--output", str(output), "--boxes", str(bad_key), "--propagate"])
    assert refused.returncode == 2 and f"{bad_key}: Box entry 0: class 1, slice 20: the key slice is outside" in \
        refused.stderr
    refused = _predict([*common, "--output", str(output), "--boxes", str(tmp_path / "key.json"), "--points",
                        str(tmp_path / "points.json")])
    assert refused.returncode == 2 and "add --propagate" in refused.stderr
    refused = _predict([*common, "--output", str(output), "--prompt_labels", str(label), "--propagate"])
    assert refused.returncode == 2 and "--propagate reads the --boxes entries as key slices" in refused.stderr


def test_a_prompt_free_model_refuses_propagate():
    import argparse

    from modeling_icmoe.medical.cli import SEMANTIC_MODEL_TYPE, _check_prompts

    config = {"model_type": SEMANTIC_MODEL_TYPE, "id2label": {"0": "background", "1": "liver"}}
    args = argparse.Namespace(model="organs", prompt_labels=None, boxes=None, points=None, propagate=True,
                              label_ids=None)
    with pytest.raises(ValueError, match=r"prompt-free model .* remove --propagate"):
        _check_prompts(args, config)
    args.points = "POINTS.json"
    with pytest.raises(ValueError, match=r"remove --points POINTS\.json and --propagate"):
        _check_prompts(args, config)


def test_benchmark_key_slices_and_simulated_clicks():
    from benchmarks.propagation import corrective_clicks, key_prompts

    labels = np.zeros((20, 20, 9), np.uint8)
    areas = [0, 4, 9, 16, 36, 25, 16, 1, 0]  # class 1 on slices 1..7, squares of these areas
    for index, area in enumerate(areas):
        side = int(area**0.5)
        labels[2 : 2 + side, 3 : 3 + side, index] = 1
    assert [p.index for p in key_prompts(labels, "largest")] == [4]
    assert [p.index for p in key_prompts(labels, "median")] == [3]  # areas 4 9 16 36 25 16 1 sorted: the 4th, 16
    assert [p.index for p in key_prompts(labels, "three")] == [2, 4, 6]
    assert key_prompts(labels, "largest")[0].box == [3.0, 2.0, 8.0, 7.0]
    # The slice with the most wrong pixels gets the click: a missed square (positive) or a false one (negative).
    prediction = labels.copy()
    prediction[:, :, 4] = 0
    prediction[10:13, 10:13, 5] = 1
    (click,) = corrective_clicks(prediction, labels)
    assert (click.index, click.positive) == (4, True) and labels[int(click.point[1]), int(click.point[0]), 4] == 1
    prediction = labels.copy()
    prediction[10:18, 10:18, 2] = 1
    (click,) = corrective_clicks(prediction, labels)
    assert (click.index, click.positive, click.point) == (2, False, [13.0, 13.0])


@pytest.mark.parametrize("results", ["propagation.json", "propagation_box_point.json"])
def test_the_published_numbers_are_the_results_file(results):
    from benchmarks.propagation import markers, render_choice, render_report

    data = json.loads((REPO / "benchmarks" / "results" / results).read_text())
    names = markers(data)
    for document, name, body in (("docs/BENCHMARKS.md", names["benchmarks"], render_report(data)),
                                 ("docs/METHOD.md", names["method"], render_choice(data))):
        text = (REPO / document).read_text(encoding="utf-8")
        assert f"<!-- {name}:start -->\n{body}\n<!-- {name}:end -->" in text, f"{document}: rerun --report"
    if data["settings"]["train_prompt"] == "box":  # the defaults are the choice made on validation
        chosen = data["selection"]["chosen"]
        assert PropagationSettings() == PropagationSettings(**chosen)


def test_prompt_files_that_are_not_json_lists_are_named(tmp_path):
    from modeling_icmoe.medical.cli import _json_list

    broken = tmp_path / "KEY.json"
    broken.write_text('[{"slice": 3, "label": 1, "box": [1, 2, 3, 4]')
    with pytest.raises(ValueError, match=rf"--boxes {broken}: cannot be read as JSON"):
        _json_list(str(broken), "--boxes")
    broken.write_text('{"slice": 3}')
    with pytest.raises(ValueError, match=rf"--points {broken}: expected a JSON list of entries, got dict"):
        _json_list(str(broken), "--points")
    with pytest.raises(ValueError, match=r"--boxes .*missing\.json: cannot be read as JSON"):
        _json_list(str(tmp_path / "missing.json"), "--boxes")
