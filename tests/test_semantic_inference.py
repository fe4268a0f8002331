"""`icmoe-sam predict` without prompts on NIfTI volumes and DICOM series (every class on every slice, the input's
geometry, scores against a reference with a class missing, chosen classes, the largest component, the errors) and
the prompt-free model's ONNX export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_fixtures import write_ct_series
from helpers import child_env
from hub_fixtures import sample_image
from semantic_fixtures import (
    CLASSES,
    expected_class_map,
    pipeline_of,
    save_semantic_model,
    segments_class_map,
    semantic_model,
)
from transformers import SamProcessor
from volume_fixtures import SHAPE, save_nifti, volume_arrays

from modeling_icmoe import (
    IcMoeAdapterConfig,
    IcMoeSamModel,
    scale_intensities,
    to_uint8_rgb,
)
from modeling_icmoe.medical.cli import _score, main
from modeling_icmoe.medical.volumes import (
    Volume,
    keep_largest_component,
    load_label_map,
    load_nifti,
    load_volume,
    save_label_map,
    segment_volume_without_prompts,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_base_dir):
    return save_semantic_model(tmp_path_factory.mktemp("semantic_model"), tiny_base_dir)


@pytest.fixture(scope="module")
def segmenter(saved):
    return pipeline_of(saved)


# ------------------------------------------------------------------------------------------- volumes and the CLI
@pytest.fixture(scope="module")
def volume_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("volume")
    image, labels = volume_arrays()
    return save_nifti(image, folder / "ct.nii.gz"), save_nifti(labels, folder / "labels.nii.gz")


def _canonical_class_maps(segmenter, volume: Volume, window) -> np.ndarray:
    """Each axial slice of the canonical volume through the 2-D pipeline, stacked."""
    pixels = scale_intensities(np.asarray(volume.data), window=window)
    return np.stack([segments_class_map(segmenter(pixels[..., k]), pixels.shape[:2]) for k in range(pixels.shape[2])],
                    axis=-1)


@pytest.mark.slow
def test_predict_without_prompts_writes_every_class_at_the_inputs_geometry(tmp_path, saved, segmenter, volume_files):
    image_path, label_path = volume_files
    output = tmp_path / "pred.nii.gz"
    console = shutil.which("icmoe-sam", path=str(Path(sys.executable).parent))
    assert console is not None, "icmoe-sam is not installed beside this Python"
    command = [console, "predict", "--model", str(saved), "--input", str(image_path), "--output", str(output),
               "--window", "soft_tissue", "--batch_size", "4", "--device", "cpu", "--reference", str(label_path)]
    result = subprocess.run(command, env=child_env(), capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Segmenting slices" in result.stderr  # the progress bar
    saved_image, source = nib.load(str(output)), nib.load(str(image_path))
    assert saved_image.shape == source.shape == SHAPE and np.allclose(saved_image.affine, source.affine)
    assert saved_image.get_data_dtype() == np.uint8
    volume = load_nifti(image_path)
    predicted = np.asarray(nib.as_closest_canonical(saved_image).dataobj)
    assert np.array_equal(predicted, _canonical_class_maps(segmenter, volume, (40.0, 400.0)))
    present = [v for v in np.unique(predicted).tolist() if v != 0]
    assert len(present) >= 2
    assert f"classes predicted: {', '.join(CLASSES[v] for v in present)})" in result.stdout
    # The reference holds liver (1) and kidney (2), no spleen (3): spleen is a false positive where predicted, else
    # absent from both and not counted.
    scores = json.loads((tmp_path / "pred.nii.gz.metrics.json").read_text())
    reference = load_label_map(label_path, volume).data
    assert set(np.unique(reference).tolist()) == {0, 1, 2}
    spleen = [3] if 3 in present else []
    assert scores["absent_in_reference"] == spleen and scores["not_counted"] == ([] if spleen else [3])
    assert set(scores["per_class"]) == {"1", "2", *map(str, spleen)}
    assert scores["label_names"] == {str(v): CLASSES[v] for v in (1, 2, *spleen)}
    assert scores["per_class"].get("3", {"dice": 0.0})["dice"] == 0.0
    for label in (1, 2):
        dice = 2 * ((predicted == label) & (reference == label)).sum() / ((predicted == label).sum()
                                                                          + (reference == label).sum())
        assert scores["per_class"][str(label)]["dice"] == pytest.approx(dice, abs=1e-5)


def _predict(*argv) -> int:
    return main(["predict", "--device", "cpu", *map(str, argv)])


def test_chosen_classes_the_largest_component_and_a_reference_missing_a_class(tmp_path, saved, segmenter,
                                                                              volume_files):
    image_path, label_path = volume_files
    volume = load_nifti(image_path)
    full = segment_volume_without_prompts(segmenter.model, segmenter.processor, volume, axis=2, window=(40.0, 400.0),
                                          progress=False)
    reference = load_label_map(label_path, volume).data.copy()
    reference[reference == 2] = 0  # no kidney in this reference
    reference[:3, :3, :] = 7  # and a label the model does not know
    # Stored as the fixture stores its volumes: the first two axes flipped from canonical.
    missing = save_nifti(np.ascontiguousarray(reference[::-1, ::-1, :]), tmp_path / "no_kidney.nii.gz")
    assert np.array_equal(load_label_map(missing, volume).data, reference)

    assert _predict("--model", saved, "--input", image_path, "--output", tmp_path / "kidney.nii.gz", "--window",
                    "soft_tissue", "--label_ids", 2, "--reference", missing) == 0
    kidney = load_label_map(tmp_path / "kidney.nii.gz", volume).data
    assert np.array_equal(kidney, np.where(full == 2, 2, 0))  # the other classes written as background
    scores = json.loads((tmp_path / "kidney.nii.gz.metrics.json").read_text())
    assert scores["absent_in_reference"] == [2] and scores["per_class"]["2"]["dice"] == 0.0  # a false positive
    assert scores["reference_labels_not_scored"] == [1, 7]

    assert _predict("--model", saved, "--input", image_path, "--output", tmp_path / "largest.nii.gz", "--window",
                    "40", "400", "--keep_largest_component") == 0
    largest = load_label_map(tmp_path / "largest.nii.gz", volume).data
    assert np.array_equal(largest, keep_largest_component(full))
    from scipy import ndimage

    for label in (1, 2):
        _, count = ndimage.label(largest == label, structure=np.ones((3, 3, 3)))
        assert count == 1
    assert (largest != full).any()  # the fixture's prediction has stray components to remove


def test_keep_largest_component_per_class_in_3d():
    labels = np.zeros((4, 6, 6), dtype=np.uint8)
    labels[0, :2, :2] = 1  # 4 voxels
    labels[1, 2, 2] = 1  # touches the first at a corner only: one component with 26-connectivity
    labels[3, 4:, 4:] = 1  # 4 voxels apart: removed
    labels[2:, 0, 4:] = 2  # class 2: 4 voxels
    labels[0, 5, 0] = 2  # 1 voxel apart: removed
    kept = keep_largest_component(labels)
    assert kept.dtype == labels.dtype and (kept == 1).sum() == 5 and (kept == 2).sum() == 4
    assert not kept[3, 4:, 4:].any() and kept[0, 5, 0] == 0 and kept[1, 2, 2] == 1
    only_two = keep_largest_component(labels, [2])
    assert np.array_equal(only_two == 1, labels == 1) and (only_two == 2).sum() == 4
    assert (labels == 1).sum() == 9  # the input is not changed


def test_scores_follow_the_absent_class_rule(tmp_path):
    """METRICS.md's rule in mm: absent from both not counted, a false positive and a miss score 0."""
    prediction = np.zeros((6, 6, 3), dtype=np.uint8)
    prediction[1:3, 1:3, 1] = 1  # liver, also in the reference
    prediction[4:, 4:, 1] = 2  # kidney, not in the reference
    reference_data = np.zeros_like(prediction)
    reference_data[1:3, 1:3, 1] = 1
    reference_data[0, 4:, :] = 3  # spleen, not predicted
    reference = Volume(data=reference_data, spacing=(1.0, 1.0, 2.0), image=None, path="reference.nii.gz")
    args = Namespace(input="ct.nii.gz", reference="reference.nii.gz", nsd_tolerance_mm=1.0,
                     output=str(tmp_path / "pred.nii.gz"), metrics_output=None)
    result = _score(args, prediction, reference, [1, 2, 3, 4], {1: "liver", 2: "kidney", 3: "spleen", 4: "aorta"})
    assert json.loads((tmp_path / "pred.nii.gz.metrics.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["per_class"]) == {"1", "2", "3"} and result["not_counted"] == [4]
    assert result["per_class"]["1"]["dice"] == 1.0 and result["per_class"]["1"]["hd95"] == 0.0
    assert result["per_class"]["2"]["dice"] == 0.0 and result["absent_in_reference"] == [2]
    assert result["per_class"]["3"]["dice"] == 0.0  # a miss
    assert result["per_class"]["3"]["hd95"] == pytest.approx(np.linalg.norm([6.0, 6.0, 6.0]))


def test_a_seg_and_a_nifti_output_of_one_input_keep_their_own_scores(tmp_path, saved):
    folder, masks = write_ct_series(tmp_path / "series")
    volume = load_volume(folder)
    reference = save_label_map(np.transpose(masks, (2, 1, 0))[::-1, ::-1, :].astype(np.uint8), volume,
                               tmp_path / "reference.nii.gz")
    for output in ("seg.dcm", "seg.nii.gz"):
        assert _predict("--model", saved, "--input", folder, "--output", tmp_path / output, "--window",
                        "soft_tissue", "--reference", reference) == 0
    assert sorted(p.name for p in tmp_path.glob("seg*")) == [
        "seg.dcm", "seg.dcm.metrics.json", "seg.nii.gz", "seg.nii.gz.metrics.json"
    ]
    for output in ("seg.dcm", "seg.nii.gz"):
        assert json.loads((tmp_path / f"{output}.metrics.json").read_text())["reference"] == str(reference)


def test_predict_on_a_series_writes_one_segment_per_predicted_class(tmp_path, saved, segmenter):
    folder, _ = write_ct_series(tmp_path / "series")
    assert _predict("--model", saved, "--input", folder, "--output", tmp_path / "pred.dcm", "--window",
                    "soft_tissue", "--batch_size", 2) == 0
    volume = load_volume(folder)
    expected = segment_volume_without_prompts(segmenter.model, segmenter.processor, volume, axis=2,
                                              window="soft_tissue", progress=False)
    present = [v for v in np.unique(expected).tolist() if v != 0]
    assert present
    seg = pydicom.dcmread(tmp_path / "pred.dcm")
    assert seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [CLASSES[v] for v in present]
    back = load_label_map(tmp_path / "pred.dcm", volume)
    assert np.array_equal(back.data, expected)
    assert back.label_names == {v: CLASSES[v] for v in present}


def test_predict_errors_name_the_model_and_the_value(tmp_path, saved, volume_files, tiny_base_dir, capsys):
    image_path, label_path = volume_files
    prompted = tmp_path / "prompted"
    IcMoeSamModel.from_pretrained(tiny_base_dir, icmoe_config=IcMoeAdapterConfig(expert_rank=4)).save_pretrained(
        prompted)
    SamProcessor.from_pretrained(tiny_base_dir).save_pretrained(prompted)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"slice": 2, "label": 1, "box": [3, 4, 15, 14]}]))
    output = tmp_path / "out.nii.gz"
    cases = [
        (["--model", prompted], f"--model {prompted} is a prompted `icmoe_sam` model: give its prompts"),
        (["--model", saved, "--boxes", boxes], f"--model {saved} is a prompt-free model .* remove --boxes {boxes}"),
        (["--model", saved, "--prompt_labels", label_path], f"remove --prompt_labels {label_path}"),
        (["--model", saved, "--label_ids", 2, 9], rf"--label_ids \[9\]: --model {saved} has no such class"),
        (["--model", saved, "--label_ids", 0], r"--label_ids \[0\]: .*0 is the background"),
    ]
    for arguments, message in cases:
        assert _predict(*arguments, "--input", image_path, "--output", output) == 2
        error = capsys.readouterr().err
        assert re.search(message, error), error
    assert not output.exists()


# --------------------------------------------------------------------------------------------------------- ONNX
@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["mask_tokens", "queries"])
def test_onnx_export_of_the_prompt_free_model(tmp_path, tiny_base_dir, decoder):
    ort = pytest.importorskip("onnxruntime")
    from modeling_icmoe.medical.export import export_onnx

    model = semantic_model(tiny_base_dir, decoder)
    processor = SamProcessor.from_pretrained(tiny_base_dir)
    report = export_onnx(model, processor, tmp_path / "onnx")
    out = tmp_path / "onnx"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "export_config.json", "processor_config.json", "semantic_segmentation.onnx"
    ]
    assert report["parts"]["semantic_segmentation"]["max_difference"] < 1e-3
    config = json.loads((out / "export_config.json").read_text())
    assert config["id2label"] == {str(k): v for k, v in CLASSES.items()} and config["parts"] == report["parts"]
    assert "1 `liver`" in (out / "README.md").read_text()
    # A batch of two, other than the export's sample of one; then the README's recipe to class maps.
    images = [to_uint8_rgb(sample_image(48, 56, seed=7)), to_uint8_rgb(sample_image(48, 56, seed=8))]
    inputs = processor(images=images, return_tensors="np")
    (logits,) = ort.InferenceSession(str(out / "semantic_segmentation.onnx")).run(
        None, {"pixel_values": inputs["pixel_values"].astype(np.float32)})
    with torch.no_grad():
        expected = model(pixel_values=torch.from_numpy(inputs["pixel_values"]).float()).logits.numpy()
    assert logits.shape == (2, 4, 32, 32)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    full = processor.post_process_masks(torch.from_numpy(logits)[:, :, None], inputs["original_sizes"],
                                        inputs["reshaped_input_sizes"], binarize=False)
    for image_logits, image in zip(full, images, strict=True):
        assert np.array_equal(image_logits[:, 0].argmax(dim=0).numpy(), expected_class_map(model, processor, image)[0])


@pytest.mark.slow
def test_export_command_on_a_prompt_free_model(tmp_path, saved, capsys):
    assert main(["export", "--model", str(saved), "--output", str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    assert "semantic_segmentation.onnx" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "onnx").glob("*.onnx")] == ["semantic_segmentation.onnx"]
