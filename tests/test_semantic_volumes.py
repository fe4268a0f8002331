"""`--prompt none` on volumes: class names from dataset.json, every slice with its class-id map, per-volume and
per-class scores in millimetres, and the bad cases (an unnamed label value, a volume without a class)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from modeling_icmoe.medical.volume_metrics import score_volume
from modeling_icmoe.medical.volumes import load_label_map, load_volume
from training.arguments import parse_args
from training.loop import run
from training.semantic import volume_class_scores, volume_classes
from training.volume_data import load_volume_dataset
from volume_fixtures import SHAPE, save_nifti, write_decathlon

NAMES = {0: "background", 1: "organ", 2: "lesion"}


def test_classes_come_from_dataset_json_label_ids_or_the_command_line(tmp_path):
    folder = write_decathlon(tmp_path / "named", cases=2)
    assert volume_classes(str(folder), None, None) == (NAMES, [0, 1, 2])
    # --label_ids chooses classes among the stored values; their ids are 1 .. K in that order.
    assert volume_classes(str(folder), None, [2]) == ({0: "background", 1: "lesion"}, [0, 2])
    assert volume_classes(str(folder), ["background", "organ", "lesion"], None) == (NAMES, [0, 1, 2])
    with pytest.raises(ValueError, match="differ from the classes"):
        volume_classes(str(folder), ["background", "lesion", "organ"], None)
    unnamed = write_decathlon(tmp_path / "unnamed", cases=2, names=False)
    with pytest.raises(ValueError, match="needs the class names"):
        volume_classes(str(unnamed), None, None)
    assert volume_classes(str(unnamed), ["background", "a", "b"], None) == ({0: "background", 1: "a", 2: "b"},
                                                                             [0, 1, 2])


def test_every_slice_is_a_row_with_its_class_map(tmp_path):
    folder = write_decathlon(tmp_path / "data", cases=3)
    dataset, summary = load_volume_dataset(str(folder), image_column="image", mask_column="mask",
                                           class_values=[0, 2], label_ids=[2], validation_fraction=0.34, seed=0)
    rows = dataset["train"]
    assert len(rows) == summary.splits["train"]["volumes"] * SHAPE[2]  # every slice, the empty ones too
    case = rows[0]["case"]
    volume = load_volume(folder / "imagesTr" / f"{case}_0000.nii.gz")
    labels = load_label_map(folder / "labelsTr" / f"{case}.nii.gz", volume)  # canonical, as the slicing reads it
    for row in rows.filter(lambda r: r["case"] == case):
        expected = (labels.slice(2, row["slice_index"]) == 2).astype(np.uint8)  # class 1 is the stored value 2
        assert np.array_equal(np.array(row["mask"]), expected)
    assert summary.splits["train"]["slices_without_label"] > 0
    assert summary.to_dict()["rows"] == "one per slice, with its class-id map"


def test_an_unnamed_label_value_is_refused_naming_the_file_and_a_missing_class_is_counted(tmp_path):
    folder = write_decathlon(tmp_path / "data", cases=3)
    label_file = folder / "labelsTr" / "case001.nii.gz"
    labels = np.asarray(nib.load(str(label_file)).dataobj).copy()
    labels[labels == 2] = 0  # this volume has no lesion
    save_nifti(labels, label_file)
    _, summary = load_volume_dataset(str(folder), image_column="image", mask_column="mask", class_values=[0, 1, 2],
                                     validation_fraction=0.34, seed=0)
    counted = sum(split.get("volumes_missing_a_class", 0) for split in summary.splits.values())
    assert counted == 1 and any("case001: lesion" in note for note in summary.notes)
    labels[0, 0, 0] = 7
    save_nifti(labels, label_file)
    with pytest.raises(ValueError, match=r"case001\.nii\.gz: the label map holds values \[7\] that are not named"):
        load_volume_dataset(str(folder), image_column="image", mask_column="mask", class_values=[0, 1, 2],
                            validation_fraction=0.34, seed=0)


def test_volume_scores_per_class_in_mm():
    reference = np.zeros((4, 10, 10), np.uint8)
    reference[1:3, 2:6, 2:6] = 1
    prediction = reference.copy()
    prediction[1, 2:6, 2:4] = 0  # a quarter of class 1 missed
    prediction[3, 8, 8] = 2  # class 2 predicted where the reference has none: counted, scores 0
    metas = [{"case": "a", "slice_index": i, "spacing": [3.0, 0.5, 0.5], "label_id": 0, "label_name": ""}
             for i in (2, 0, 3, 1)]  # any order: slices are put back by index
    order = [2, 0, 3, 1]
    scores = volume_class_scores([prediction[i] for i in order], [reference[i] for i in order], metas,
                                 {0: "background", 1: "organ", 2: "lesion", 3: "absent"}, nsd_tolerance_mm=1.0)
    expected = score_volume(prediction == 1, reference == 1, [3.0, 0.5, 0.5])
    assert scores["per_class"]["1"]["dice"] == pytest.approx(expected["dice"]) == pytest.approx(2 * 24 / (24 + 32))
    assert scores["per_class"]["2"]["dice"] == 0.0
    assert "3" not in scores["per_class"]  # absent from both: not counted
    assert scores["mean"]["dice"] == pytest.approx(expected["dice"] / 2)
    assert scores["label_names"] == {"1": "organ", "2": "lesion"}
    with pytest.raises(ValueError, match="not consecutive"):
        volume_class_scores([prediction[0], prediction[2]], [reference[0], reference[2]], [metas[1], metas[0]],
                            {0: "background", 1: "organ"}, nsd_tolerance_mm=1.0)


def test_training_without_prompts_on_a_decathlon_folder(tmp_path, tiny_base_dir):
    folder = write_decathlon(tmp_path / "data", cases=3, test_cases=2)
    out = tmp_path / "run"
    run(parse_args(["--base_model", str(tiny_base_dir), "--dataset", str(folder), "--output_dir", str(out),
                    "--prompt", "none", "--max_train_steps", "2", "--per_device_train_batch_size", "2",
                    "--dataloader_num_workers", "0", "--num_example_figures", "0"]))
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["semantic"]["id2label"] == {str(k): v for k, v in NAMES.items()}
    assert saved["n_images"] == 2 * SHAPE[2]  # every slice of the two test volumes
    volumes = saved["volumes"]
    assert volumes["n_volumes"] == volumes["mean"]["n_volumes"] == 2 and volumes["mean"]["n_cases"] == len(volumes["per_case"])
    assert set(volumes["label_names"].values()) <= {"organ", "lesion"}
    assert {record["case"] for record in volumes["per_case"]} == {"case100", "case101"}
    assert all(0.0 <= record["dice"] <= 1.0 and record["hd95"] >= 0.0 for record in volumes["per_case"])
    card = (out / "README.md").read_text()
    assert "organ" in card and "mm" in card and "segmented without prompts" in card


def test_label_values_behind_the_class_ids_are_kept_for_predict(tmp_path, tiny_base_dir):
    """Trained on stored value 2 alone (`--label_ids 2`, class id 1), the model writes and scores value 2."""
    from modeling_icmoe.medical.cli import main as cli

    folder = write_decathlon(tmp_path / "data", cases=3, test_cases=1)
    out = tmp_path / "run"
    run(parse_args(["--base_model", str(tiny_base_dir), "--dataset", str(folder), "--output_dir", str(out),
                    "--prompt", "none", "--label_ids", "2", "--max_train_steps", "2", "--learning_rate", "0.05",
                    "--per_device_train_batch_size", "2", "--dataloader_num_workers", "0",
                    "--num_example_figures", "0"]))
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "background", "1": "lesion"} and config["label_values"] == [0, 2]
    image, label = folder / "imagesTs" / "case100_0000.nii.gz", folder / "labelsTs" / "case100.nii.gz"
    assert cli(["predict", "--model", str(out), "--input", str(image), "--output", str(tmp_path / "p.nii.gz"),
                "--reference", str(label), "--device", "cpu"]) == 0
    written = set(np.unique(np.asarray(nib.load(str(tmp_path / "p.nii.gz")).dataobj))) - {0}
    assert written <= {2}
    scores = json.loads((tmp_path / "p.nii.gz.metrics.json").read_text())
    assert set(scores["per_class"]) <= {"2"} and scores["reference_labels_not_scored"] == [1]
    # --label_ids of predict are the same label values.
    assert cli(["predict", "--model", str(out), "--input", str(image), "--output", str(tmp_path / "q.nii.gz"),
                "--label_ids", "1", "--device", "cpu"]) == 2


def test_label_ids_that_name_nothing_are_refused(tmp_path):
    folder = write_decathlon(tmp_path / "data", cases=3)
    with pytest.raises(ValueError, match=r"--label_ids \[7\]: .* names no such label"):
        volume_classes(str(folder), None, [7])
    unnamed = write_decathlon(tmp_path / "unnamed", cases=3, names=False)
    with pytest.raises(ValueError, match=r"classes \['7'\] occur in none of the 2 training volumes"):
        load_volume_dataset(str(unnamed), image_column="image", mask_column="mask", class_values=[0, 7],
                            label_ids=[7], validation_fraction=0.34, seed=0)
