"""DICOM: series folders in (ordered by position, in HU), DICOM SEG in and out, `icmoe-sam predict` on a series."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import NUM_SLICES, write_ct_series
from helpers import child_env
from pydicom.data import get_testdata_file

from modeling_icmoe.medical.cli import main
from modeling_icmoe.medical.dicom import load_dicom_series
from modeling_icmoe.medical.volumes import load_label_map, load_volume, save_label_map
from training.volume_data import load_volume_dataset

REPO = Path(__file__).resolve().parents[1]


def _canonical_from_slices(slices: np.ndarray) -> np.ndarray:
    """(slice, row, column) arrays of an axial LPS series as a canonical RAS volume: columns run right to left and
    rows anterior to posterior in LPS, so both in-plane axes flip."""
    return np.transpose(slices, (2, 1, 0))[::-1, ::-1, :]


def test_series_is_ordered_by_position_and_in_hounsfield_units(tmp_path):
    folder, masks = write_ct_series(tmp_path / "series")
    volume = load_volume(folder)
    assert volume.shape == (128, 128, NUM_SLICES)
    assert volume.spacing == pytest.approx((0.8, 0.5, 5.0), rel=1e-5)  # x along a row (column spacing), y, z
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = source.pixel_array.astype(np.float32) * float(source.RescaleSlope) + float(source.RescaleIntercept)
    expected = np.where(masks, 200.0, hu[None])  # the object is 200 HU, the rest the real slice
    assert np.array_equal(volume.data, _canonical_from_slices(expected))
    # World position of voxel (0, 0, 0) in RAS: the last column and row of the first slice, with x and y negated.
    corner = np.array(source.ImagePositionPatient, float) + 127 * np.array([0.8, 0.5, 0.0])
    assert volume.affine[:3, 3] == pytest.approx(corner * np.array([-1, -1, 1]), abs=1e-3)
    assert [int(ds.InstanceNumber) for ds in volume.dicom_sources] == list(range(1, NUM_SLICES + 1))


def test_a_real_mr_slice_reads_as_a_one_slice_series(tmp_path):
    (tmp_path / "mr").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr" / "mr.dcm")
    volume = load_dicom_series(tmp_path / "mr")
    assert volume.shape == (64, 64, 1)
    assert volume.spacing == pytest.approx((0.3125, 0.3125, 0.8))


def test_bad_series_are_named(tmp_path):
    folder, _ = write_ct_series(tmp_path / "series")
    (folder / "notes.txt").write_text("not DICOM")
    with pytest.raises(ValueError, match="notes.txt: not a DICOM file"):
        load_dicom_series(folder)
    (folder / "notes.txt").unlink()
    (folder / "slice_2.dcm").unlink()
    with pytest.raises(ValueError, match="not a regular grid"):
        load_dicom_series(folder)
    other, _ = write_ct_series(tmp_path / "other")
    shutil.copy(other / "slice_2.dcm", folder / "slice_2.dcm")
    with pytest.raises(ValueError, match="holds 2 series"):
        load_dicom_series(folder)
    duplicate, _ = write_ct_series(tmp_path / "duplicate", shuffle=False)
    ds = pydicom.dcmread(duplicate / "slice_1.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(duplicate / "slice_1_again.dcm")
    with pytest.raises(ValueError, match="share one position"):
        load_dicom_series(duplicate)


def test_slices_that_disagree_on_spacing_or_frame_of_reference_are_named(tmp_path, capsys):
    folder, _ = write_ct_series(tmp_path / "series")
    rounded = pydicom.dcmread(folder / "slice_1.dcm")
    rounded.PixelSpacing = [0.50002, 0.8]  # a writer's rounding, within the tolerance
    rounded.save_as(folder / "slice_1.dcm")
    assert load_volume(folder).spacing == pytest.approx((0.8, 0.5, 5.0), rel=1e-5)
    for name, spacing in (("slice_3.dcm", [0.45, 0.8]), ("slice_4.dcm", [0.5, 0.9])):
        ds = pydicom.dcmread(folder / name)
        ds.PixelSpacing = spacing
        ds.save_as(folder / name)
    with pytest.raises(ValueError, match=r"disagree on PixelSpacing: slice_0\.dcm has \[0\.5, 0\.8\], but "
                                         r"slice_3\.dcm has \[0\.45, 0\.8\]; slice_4\.dcm has \[0\.5, 0\.9\];"):
        load_volume(folder)
    # `icmoe-sam predict` refuses the series before it loads the model: this one is a config without weights.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "icmoe_sam"}')
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(folder), "--output",
                 str(tmp_path / "pred.dcm"), "--boxes", str(tmp_path / "unread.json")]) == 2
    assert "slice_3.dcm has [0.45, 0.8]" in capsys.readouterr().err and not (tmp_path / "pred.dcm").exists()

    folder, _ = write_ct_series(tmp_path / "frames")
    ds = pydicom.dcmread(folder / "slice_2.dcm")
    frame, ds.FrameOfReferenceUID = ds.FrameOfReferenceUID, pydicom.uid.generate_uid()
    ds.save_as(folder / "slice_2.dcm")
    with pytest.raises(ValueError, match=rf"disagree on FrameOfReferenceUID: slice_0\.dcm has {frame}, but "
                                         rf"slice_2\.dcm has {ds.FrameOfReferenceUID};"):
        load_volume(folder)


def test_seg_round_trip_references_the_series(tmp_path):
    folder, masks = write_ct_series(tmp_path / "series")
    volume = load_volume(folder)
    labels = _canonical_from_slices(masks.astype(np.int32) * 5)
    labels[60:64, 60:64, 0] = 2  # a second class in a slice the first does not reach
    written = save_label_map(labels, volume, tmp_path / "pred.dcm", {5: "lesion"})
    seg = pydicom.dcmread(written)
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.dicom_sources[0].SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["label 2", "lesion"]  # numbered 1, 2 in label order
    sources = {str(ds.SOPInstanceUID) for ds in volume.dicom_sources}
    referenced = {
        str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert referenced <= sources and len(referenced) == 4  # slices 0..3 hold a label, slice 4 none (omitted)
    back = load_label_map(written, volume)
    assert np.array_equal(back.data, labels)  # the label ids come back, not DICOM's segment numbers
    assert back.label_names == {2: "label 2", 5: "lesion"}
    other = load_volume(write_ct_series(tmp_path / "other")[0])
    with pytest.raises(ValueError, match="not the image series"):
        load_label_map(written, other)
    with pytest.raises(ValueError, match="needs the image as a DICOM series"):
        save_label_map(labels, load_volume(_nifti_of(volume, tmp_path)), tmp_path / "x.dcm")


def test_seg_segments_are_coded_by_their_names(tmp_path):
    folder, _ = write_ct_series(tmp_path / "series")
    volume = load_volume(folder)
    names = {1: "liver", 2: "Spleen", 3: "kidney_left", 4: "aorta", 5: "unknown_thing", 6: "Right kidney"}
    labels = np.zeros(volume.shape, dtype=np.int32)
    for label in names:
        labels[10 * label:10 * label + 4, 20:24, label % NUM_SLICES] = label
    seg = pydicom.dcmread(save_label_map(labels, volume, tmp_path / "organs.dcm", names))
    coded = {}
    for segment in seg.SegmentSequence:
        kind = segment.SegmentedPropertyTypeCodeSequence[0]
        modifiers = [m.CodeValue for m in kind.get("SegmentedPropertyTypeModifierCodeSequence", [])]
        coded[segment.SegmentLabel] = (segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue, kind.CodeValue,
                                       modifiers)
        assert kind.CodingSchemeDesignator == "SCT"
    anatomical, tissue, left, right = "91723000", "85756007", "7771000", "24028007"
    assert coded == {
        "liver": (anatomical, "10200004", []),
        "Spleen": (anatomical, "78961009", []),
        "kidney_left": (anatomical, "64033007", [left]),
        "aorta": (anatomical, "15825003", []),
        "unknown_thing": (tissue, tissue, []),  # the generic code, only for a name no dictionary knows
        "Right kidney": (anatomical, "64033007", [right]),
    }
    assert load_label_map(tmp_path / "organs.dcm", volume).label_names == names


def test_a_csv_of_seg_labels_records_their_segment_names(tmp_path):
    from training.semantic import volume_classes
    from training.volume_data import discover_cases, volume_label_names

    rows = ["image,label,split"]
    for name, split, segment_names in (("a", "train", {1: "liver", 2: "spleen"}), ("b", "train", {1: "liver"}),
                                       ("c", "test", {})):  # `c` is unnamed: its SEG says "label 1", "label 2"
        folder, masks = write_ct_series(tmp_path / name)
        labels = _canonical_from_slices(masks.astype(np.int32))
        labels[2:6, 2:6, 1] = 2 if name != "b" else 0
        seg = save_label_map(labels, load_volume(folder), tmp_path / f"{name}_seg.dcm", segment_names)
        rows.append(f"{name},{seg.name},{split}")
    csv = tmp_path / "pairs.csv"
    csv.write_text("\n".join(rows) + "\n")
    assert discover_cases(str(csv), [])[1] == {1: "liver", 2: "spleen"}
    assert volume_label_names(str(csv)) == {1: "liver", 2: "spleen"}
    assert volume_classes(str(csv), None, None) == ({0: "background", 1: "liver", 2: "spleen"}, [0, 1, 2])
    _, summary = load_volume_dataset(str(csv), image_column="image", mask_column="mask")
    assert summary.to_dict()["label_names"] == {"1": "liver", "2": "spleen"}  # what eval_results.json records

    folder = tmp_path / "a"
    save_label_map(_canonical_from_slices(write_ct_series(folder)[1].astype(np.int32)), load_volume(folder),
                   tmp_path / "a_seg.dcm", {1: "kidney"})
    with pytest.raises(ValueError, match=r"Label 1 is 'kidney' in .*a_seg\.dcm but 'liver' in .*b_seg\.dcm"):
        discover_cases(str(csv), [])


def _nifti_of(volume, tmp_path):
    import nibabel as nib

    path = tmp_path / "as_nifti.nii.gz"
    nib.save(volume.image, str(path))
    return path


@pytest.mark.slow
def test_predict_on_a_series_writes_a_seg(tmp_path, tiny_base_dir):
    from transformers import SamProcessor

    from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamModel

    folder, masks = write_ct_series(tmp_path / "series")
    volume = load_volume(folder)
    prompts = save_label_map(_canonical_from_slices(masks.astype(np.int32)), volume, tmp_path / "coarse.dcm",
                             {1: "lesion"})
    model = IcMoeSamModel.from_pretrained(tiny_base_dir, icmoe_config=IcMoeAdapterConfig(expert_rank=4))
    model.save_pretrained(tmp_path / "model")
    SamProcessor.from_pretrained(tiny_base_dir).save_pretrained(tmp_path / "model")
    command = [
        sys.executable, "-m", "modeling_icmoe.medical.cli", "predict", "--model", str(tmp_path / "model"),
        "--input", str(folder), "--output", str(tmp_path / "pred.dcm"), "--prompt_labels", str(prompts),
        "--reference", str(prompts), "--window", "soft_tissue", "--device", "cpu",
    ]
    env = child_env()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = load_label_map(tmp_path / "pred.dcm", volume)
    assert predicted.label_names == {1: "lesion"}
    assert set(np.unique(predicted.data)) <= {0, 1} and not predicted.data[..., [0, 4]].any()
    assert (tmp_path / "pred.dcm.metrics.json").is_file()
    nifti_input = subprocess.run(
        [*command[:7], str(_nifti_of(volume, tmp_path)), *command[8:]], env=env, capture_output=True, text=True,
        timeout=300, cwd=REPO,
    )
    assert nifti_input.returncode == 2 and "references a DICOM series" in nifti_input.stderr


@pytest.mark.slow
def test_training_on_series_with_seg_labels(tmp_path, tiny_base_dir):
    from modeling_icmoe.medical.checkpoint import training_record
    from training.arguments import parse_args
    from training.loop import run

    rows = ["image,label,split"]
    for name, split in (("a", "train"), ("b", "train"), ("c", "test")):
        folder, masks = write_ct_series(tmp_path / name)
        seg = save_label_map(_canonical_from_slices(masks.astype(np.int32)), load_volume(folder),
                             tmp_path / f"{name}_seg.dcm", {1: "lesion"})
        rows.append(f"{name},{seg.name},{split}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    args = parse_args([
        "--base_model", str(tiny_base_dir), "--dataset", str(tmp_path / "pairs.csv"), "--output_dir",
        str(tmp_path / "out"), "--max_train_steps", "1", "--per_device_train_batch_size", "2",
        "--dataloader_num_workers", "0", "--window", "soft_tissue", "--num_example_figures", "0",
    ])
    results = run(args)
    assert results["volumes"]["per_case"][0]["label_name"] == "lesion"
    assert results["volume_data"]["label_names"] == {"1": "lesion"}  # from the SEGs' segments
    assert training_record(str(tmp_path / "out"))["label_names"] == {"1": "lesion"}  # what predict names SEGs from
    assert results["volume_data"]["splits"]["train"] == {
        "volumes": 2, "rows": 6, "slices_without_label": 4, "objects_too_small": 0, "volumes_without_label": 0
    }
