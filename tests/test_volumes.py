"""NIfTI volumes: canonical reading, slicing, windowing, volume-level splits, per-class prompts, mm metrics, and
`icmoe-sam predict` end to end."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import child_env
from volume_fixtures import AFFINE, SHAPE, save_nifti, volume_arrays, write_decathlon

from modeling_icmoe.imaging import scale_intensities, to_uint8_rgb
from modeling_icmoe.medical.volume_metrics import score_volume
from modeling_icmoe.medical.volumes import (
    load_label_map,
    load_nifti,
    load_volume,
    prompts_from_boxes,
    prompts_from_label_map,
    resolve_slice_axis,
    save_label_map,
)
from training.volume_data import load_volume_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def volume_files(tmp_path):
    image, labels = volume_arrays()
    return save_nifti(image, tmp_path / "ct.nii.gz"), save_nifti(labels, tmp_path / "labels.nii.gz"), image, labels


def test_reading_is_canonical(volume_files):
    image_path, _, image, _ = volume_files
    volume = load_nifti(image_path)
    # The stored i and j axes point left and posterior: canonical RAS flips both, keeps k, and reorders nothing.
    assert volume.shape == SHAPE
    assert np.array_equal(volume.data, image[::-1, ::-1, :])
    assert volume.spacing == pytest.approx((0.9, 0.8, 3.0))
    assert volume.slice_spacing(2) == pytest.approx((0.9, 0.8))
    assert volume.slice_spacing(0) == pytest.approx((0.8, 3.0))


def test_permuted_axes_are_reordered(tmp_path):
    image, _ = volume_arrays()
    permuted = np.transpose(image, (2, 0, 1))  # stored as (k, i, j)
    affine = AFFINE[:, [2, 0, 1, 3]]
    volume = load_nifti(save_nifti(permuted, tmp_path / "permuted.nii.gz", affine))
    assert np.array_equal(volume.data, image[::-1, ::-1, :])
    assert volume.spacing == pytest.approx((0.9, 0.8, 3.0))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_one_prompt_per_class_and_slice(volume_files, axis):
    image_path, label_path, _, labels = volume_files
    label_map = load_label_map(label_path, load_nifti(image_path))
    prompts = prompts_from_label_map(label_map, axis)
    expected = sum(
        int((np.take(labels, index, axis=axis) == label).any()) for label in (1, 2) for index in range(SHAPE[axis])
    )
    assert len(prompts) == expected
    for prompt in prompts:
        plane = label_map.slice(axis, prompt.index) == prompt.label
        rows, cols = np.nonzero(plane)
        assert prompt.box == [cols.min(), rows.min(), cols.max(), rows.max()]
    assert {p.label for p in prompts_from_label_map(label_map, axis, [2])} == {2}


def test_label_map_round_trip_keeps_geometry(tmp_path, volume_files):
    image_path, label_path, _, labels = volume_files
    volume = load_nifti(image_path)
    canonical = load_label_map(label_path, volume).data
    written = save_label_map(canonical, volume, tmp_path / "out" / "pred.nii.gz")
    saved, source = nib.load(str(written)), nib.load(str(image_path))
    assert saved.shape == source.shape
    assert np.allclose(saved.affine, source.affine)
    assert np.array_equal(np.asarray(saved.dataobj), labels)
    assert int(saved.header["qform_code"]) == 1 and int(saved.header["sform_code"]) == 2
    assert np.allclose(saved.header.get_zooms(), source.header.get_zooms())
    assert saved.get_data_dtype() == np.uint8


def test_bad_volume_inputs_are_named(tmp_path, volume_files):
    image_path, label_path, image, labels = volume_files
    volume = load_nifti(image_path)
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    with pytest.raises(ValueError, match="affine differs"):
        load_label_map(save_nifti(labels, tmp_path / "shifted.nii.gz", shifted), volume)
    with pytest.raises(ValueError, match=r"shape \(28, 24, 5\) differs"):
        load_label_map(save_nifti(labels[..., :5], tmp_path / "short.nii.gz"), volume)
    with pytest.raises(ValueError, match=r"label ids \[7\] never occur"):
        prompts_from_label_map(load_label_map(label_path, volume), 2, [7])
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match="broken.nii.gz: cannot be read"):
        load_nifti(broken)
    with pytest.raises(ValueError, match="non-integral"):
        load_label_map(save_nifti(labels.astype(np.float32) + 0.5, tmp_path / "soft.nii.gz"), volume)
    with pytest.raises(ValueError, match="slice axis"):
        resolve_slice_axis(3)
    with pytest.raises(ValueError, match="Box entry 0"):
        prompts_from_boxes([{"slice": 1, "label": 1, "box": [0, 0, 99, 5]}], volume, 2)


def test_nan_and_infinite_voxels_are_refused_in_prediction_and_training(tmp_path, volume_files, capsys):
    from modeling_icmoe.medical.cli import main

    _, label_path, image, _ = volume_files
    holed = image.astype(np.float32)
    holed[0, 0, 0], holed[3, 4, 5], holed[7, 7, 1] = np.nan, np.inf, -np.inf
    holed_path = save_nifti(holed, tmp_path / "holed.nii.gz")
    message = r"holed\.nii\.gz: 3 of 4032 voxels are NaN or infinite"
    with pytest.raises(ValueError, match=message):
        load_volume(holed_path)
    # The command refuses the volume before it loads the model: this one is a config without weights.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "icmoe_sam"}))
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(holed_path), "--output",
                 str(tmp_path / "pred.nii.gz"), "--prompt_labels", str(label_path)]) == 2
    assert re.search(message, capsys.readouterr().err) and not (tmp_path / "pred.nii.gz").exists()
    folder = write_decathlon(tmp_path / "Task", cases=2)
    save_nifti(holed, folder / "imagesTr" / "case001_0000.nii.gz")
    with pytest.raises(ValueError, match=r"case001_0000\.nii\.gz: 3 of 4032 voxels are NaN or infinite"):
        load_volume_dataset(str(folder), image_column="image", mask_column="mask", validation_fraction=0.5, seed=0)


def test_ct_window():
    hu = np.array([[-1000.0, -160.0, 40.0], [240.0, 1000.0, 0.0]])
    scaled = scale_intensities(hu, window="soft_tissue")  # level 40, width 400
    assert scaled.tolist() == [[0, 0, 128], [255, 255, 102]]
    assert np.array_equal(to_uint8_rgb(hu, window=(40, 400))[..., 0], scaled)
    with pytest.raises(ValueError, match="Unknown window preset"):
        scale_intensities(hu, window="kidney")
    with pytest.raises(ValueError, match="width > 0"):
        scale_intensities(hu, window=(40, 0))


def test_metrics_in_mm_by_hand():
    reference = np.zeros((3, 10, 10), bool)
    reference[1, 2:6, 2:6] = True
    prediction = np.zeros_like(reference)
    prediction[1, 2:6, 4:8] = True  # shifted by two columns of 0.5 mm
    scores = score_volume(prediction, reference, (3.0, 1.0, 0.5), nsd_tolerance_mm=0.5)
    assert scores["dice"] == pytest.approx(0.5)
    assert scores["iou"] == pytest.approx(8 / 24)
    # Every surface voxel of either square is 0 or 1 mm (two columns) from the other surface's nearest voxel.
    assert scores["hd95"] == pytest.approx(1.0)
    assert score_volume(reference, reference, (3.0, 1.0, 0.5))["hd95"] == 0.0
    empty = score_volume(np.zeros_like(reference), reference, (3.0, 1.0, 0.5))
    assert empty["dice"] == 0.0 and empty["nsd"] == 0.0
    assert empty["hd95"] == pytest.approx(np.linalg.norm([9.0, 10.0, 5.0]))


def test_metrics_match_monai():
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(3)
    for _ in range(3):
        shape, spacing = (10, 18, 16), tuple(rng.uniform(0.5, 3.0, 3))
        grid = np.mgrid[: shape[0], : shape[1], : shape[2]]
        blobs = []
        for _ in range(2):
            centre, radii = rng.uniform(4, 9, 3), rng.uniform(2, 5, 3)
            blobs.append(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1)
        prediction, reference = blobs
        ours = score_volume(prediction, reference, spacing, nsd_tolerance_mm=1.5)
        p, r = torch.tensor(prediction)[None, None], torch.tensor(reference)[None, None]
        hd = compute_hausdorff_distance(p, r, percentile=95, spacing=spacing).item()
        nsd = compute_surface_dice(p, r, class_thresholds=[1.5], spacing=spacing, include_background=True).item()
        assert ours["hd95"] == pytest.approx(hd, rel=1e-5)
        assert ours["nsd"] == pytest.approx(nsd, rel=1e-5)


def test_decathlon_folder_splits_by_volume(tmp_path):
    folder = write_decathlon(tmp_path / "Task01", cases=4)
    data, summary = load_volume_dataset(
        str(folder), image_column="image", mask_column="mask", slice_axis="axial", validation_fraction=0.25, seed=0
    )
    assert set(data) == {"train", "validation"}
    train_cases, validation_cases = set(data["train"]["case"]), set(data["validation"]["case"])
    assert len(validation_cases) == 1 and len(train_cases) == 3 and not train_cases & validation_cases
    # Label 1 lies in slices 1..4, label 2 in 2..3: 6 rows and 2 empty slices (0 and 5) per volume.
    assert summary.splits["train"] == {
        "volumes": 3, "rows": 18, "slices_without_label": 6, "objects_too_small": 0, "volumes_without_label": 0
    }
    row = data["validation"][0]
    assert row["label_name"] in {"organ", "lesion"} and row["spacing"] == pytest.approx([3.0, 0.9, 0.8])
    assert np.asarray(row["image"]).dtype == np.uint8 and set(np.unique(np.asarray(row["mask"]))) <= {0, 1}
    # Loaded again from the cache, the counts are the same.
    _, again = load_volume_dataset(
        str(folder), image_column="image", mask_column="mask", slice_axis="axial", validation_fraction=0.25, seed=0
    )
    assert again.splits == summary.splits
    only_lesion, _ = load_volume_dataset(
        str(folder), image_column="image", mask_column="mask", slice_axis=0, label_ids=[2], validation_fraction=0.25,
        seed=0,
    )
    assert set(only_lesion["train"]["label_id"]) == {2}


def test_labelled_test_volumes_and_csv(tmp_path):
    folder = write_decathlon(tmp_path / "Task02", cases=2, test_cases=1, names=False)
    data, summary = load_volume_dataset(str(folder), image_column="image", mask_column="mask")
    assert set(data) == {"train", "test"} and set(data["test"]["case"]) == {"case100"}
    assert data["test"][0]["label_name"] in {"1", "2"}
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "image,label,split\n"
        "Task02/imagesTr/case000_0000.nii.gz,Task02/labelsTr/case000.nii.gz,train\n"
        "Task02/imagesTs/case100_0000.nii.gz,Task02/labelsTs/case100.nii.gz,test\n"
    )
    from_csv, _ = load_volume_dataset(str(csv), image_column="image", mask_column="mask")
    assert len(from_csv["test"]) == len(data["test"])


def test_training_on_a_decathlon_folder_scores_volumes(tmp_path, tiny_base_dir):
    from training.arguments import parse_args
    from training.loop import run

    folder = write_decathlon(tmp_path / "Task03", cases=3, test_cases=1)
    args = parse_args([
        "--base_model", str(tiny_base_dir), "--dataset", str(folder), "--output_dir", str(tmp_path / "out"),
        "--max_train_steps", "2", "--per_device_train_batch_size", "2", "--dataloader_num_workers", "0",
        "--window", "soft_tissue", "--num_example_figures", "0", "--nsd_tolerance_mm", "2",
    ])
    results = run(args)
    volumes = results["volumes"]
    assert volumes["mean"]["n_cases"] == 2  # one test volume, two classes
    assert set(volumes["per_class"]) == {"1", "2"}
    assert {r["label_name"] for r in volumes["per_case"]} == {"organ", "lesion"}
    assert 0.0 <= volumes["mean"]["dice"] <= 1.0 and volumes["nsd_tolerance_mm"] == 2.0
    assert list(results["volume_data"]["window"]) == [40.0, 400.0]
    assert results["volume_data"]["splits"]["test"]["slices_without_label"] == 2
    assert "volumes" in results["comparisons"]["zeroshot"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "### Per volume" in card and "axial axis" in card and "CT window level 40, width 400" in card
    assert "| organ |" in card and "| zero-shot base, all classes |" in card


@pytest.mark.slow
def test_predict_command_end_to_end(tmp_path, tiny_base_dir, volume_files):
    from modeling_icmoe import IcMoeAdapterConfig, IcMoeSamModel

    image_path, label_path, _, labels = volume_files
    model = IcMoeSamModel.from_pretrained(tiny_base_dir, icmoe_config=IcMoeAdapterConfig(expert_rank=4))
    model.save_pretrained(tmp_path / "model")
    from transformers import SamProcessor

    SamProcessor.from_pretrained(tiny_base_dir).save_pretrained(tmp_path / "model")
    output = tmp_path / "pred.nii.gz"
    env = child_env()
    console = shutil.which("icmoe-sam", path=str(Path(sys.executable).parent))  # the command pip installs
    assert console is not None, "icmoe-sam is not installed beside this Python"
    command = [
        console, "predict", "--model", str(tmp_path / "model"),
        "--input", str(image_path), "--output", str(output), "--prompt_labels", str(label_path),
        "--reference", str(label_path), "--window", "40", "400", "--batch_size", "3", "--device", "cpu",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    saved, source = nib.load(str(output)), nib.load(str(image_path))
    assert saved.shape == source.shape and np.allclose(saved.affine, source.affine)
    predicted = np.asarray(saved.dataobj)
    assert set(np.unique(predicted)) <= {0, 1, 2}
    # Predictions only where a prompt was: slices holding no label stay empty; prompted ones are not.
    assert not predicted[..., 0].any() and not predicted[..., 5].any()
    assert all(predicted[..., k].any() for k in (1, 2, 3, 4))
    scores = json.loads((tmp_path / "pred.nii.gz.metrics.json").read_text())
    assert set(scores["per_class"]) == {"1", "2"} and "hd95" in scores["per_class"]["1"]

    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"slice": 2, "label": 1, "box": [3, 4, 15, 14]}]))
    command = [sys.executable, "-m", "modeling_icmoe.medical.cli", "predict", "--model", str(tmp_path / "model"),
               "--input", str(image_path), "--output", str(tmp_path / "boxes.nii.gz"), "--boxes", str(boxes)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = np.asarray(nib.load(str(tmp_path / "boxes.nii.gz")).dataobj)
    assert set(np.unique(predicted)) <= {0, 1} and not predicted[..., [0, 1, 3, 4, 5]].any()

    bad = subprocess.run(command[:-2] + ["--prompt_labels", str(tmp_path / "missing.nii.gz")], env=env,
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert bad.returncode == 2 and "missing.nii.gz: no such file" in bad.stderr


def test_case_names_splits_and_amos_style_numbering(tmp_path):
    folder = tmp_path / "Amos"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for n in range(1, 4):  # four-digit case numbers that are not nnU-Net channel suffixes
        image, labels = volume_arrays(seed=n)
        save_nifti(image, folder / "imagesTr" / f"amos_{n:04d}.nii.gz")
        save_nifti(labels, folder / "labelsTr" / f"amos_{n:04d}.nii.gz")
    data, _ = load_volume_dataset(str(folder), image_column="image", mask_column="mask", validation_fraction=0.34)
    assert set(data["train"]["case"]) | set(data["validation"]["case"]) == {"amos_0001", "amos_0002", "amos_0003"}

    for patient in ("p1", "p2"):  # the same file name in two folders: two cases
        (tmp_path / patient).mkdir()
        save_nifti(volume_arrays()[0], tmp_path / patient / "ct.nii.gz")
        save_nifti(volume_arrays()[1], tmp_path / patient / "seg.nii.gz")
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,label,split\np1/ct.nii.gz,p1/seg.nii.gz,train\np2/ct.nii.gz,p2/seg.nii.gz,test\n")
    data, _ = load_volume_dataset(str(csv), image_column="image", mask_column="mask")
    assert set(data["train"]["case"]) == {"p1/ct.nii.gz"} and set(data["test"]["case"]) == {"p2/ct.nii.gz"}
    csv.write_text("image,label,split\np1/ct.nii.gz,p1/seg.nii.gz,train\np1/ct.nii.gz,p2/seg.nii.gz,test\n")
    with pytest.raises(ValueError, match="lines 2 and 3 name the same image"):
        load_volume_dataset(str(csv), image_column="image", mask_column="mask")
    csv.write_text("image,label,split\np1/ct.nii.gz,p1/seg.nii.gz,train\np2/ct.nii.gz,p2/seg.nii.gz,val\n")
    with pytest.raises(ValueError, match="line 3: split 'val' is not one of train, validation, test"):
        load_volume_dataset(str(csv), image_column="image", mask_column="mask")


def test_small_objects_and_volumes_without_the_chosen_label_are_counted(tmp_path):
    folder = write_decathlon(tmp_path / "Task04", cases=3)
    # Case 2 gets a class-3 object of one voxel: at a label resolution of 8 pixels it vanishes.
    path = folder / "labelsTr" / "case002.nii.gz"
    labels = np.asarray(nib.load(str(path)).dataobj).copy()
    labels[2, 2, 0] = 3
    save_nifti(labels, path)
    with pytest.raises(ValueError, match="has no slice with a chosen label"):
        load_volume_dataset(str(folder), image_column="image", mask_column="mask", label_ids=[3],
                            validation_fraction=0.34, seed=0, label_size=8)
    data, summary = load_volume_dataset(
        str(folder), image_column="image", mask_column="mask", validation_fraction=0.34, seed=0, label_size=8
    )
    counts = {split: summary.splits[split] for split in summary.splits}
    assert sum(c["objects_too_small"] for c in counts.values()) == 1
    assert all(3 not in set(data[split]["label_id"]) for split in data)
    only_lesion, summary = load_volume_dataset(
        str(folder), image_column="image", mask_column="mask", label_ids=[2], validation_fraction=0.34, seed=0
    )
    assert all(c["volumes_without_label"] == 0 for c in summary.splits.values())


def test_corrupt_and_inconsistent_headers(tmp_path, volume_files):
    image_path, _, image, _ = volume_files
    blob = image_path.read_bytes()
    broken = tmp_path / "corrupt.nii.gz"
    broken.write_bytes(blob[: len(blob) * 2 // 3])  # a truncated download
    with pytest.raises(ValueError, match="corrupt.nii.gz: cannot be read"):
        load_nifti(broken)
    # An sform of 2 mm voxels with a header pixdim of 1 mm: the affine places the voxels, so spacing follows it.
    mismatch = nib.Nifti1Image(image, np.diag([2.0, 2.0, 2.0, 1.0]))
    mismatch.header.set_zooms((1.0, 1.0, 1.0))
    nib.save(mismatch, str(tmp_path / "mismatch.nii.gz"))
    assert load_nifti(tmp_path / "mismatch.nii.gz").spacing == pytest.approx((2.0, 2.0, 2.0))
