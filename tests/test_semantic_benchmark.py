"""The prompt-free benchmark end to end (`--smoke`, through its CLI), its U-Net baseline, the reference pairs and the
report."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import semantic_accuracy  # noqa: E402
from helpers import smoke_twice  # noqa: E402
from benchmarks.semantic_pairs import class_means_of_rows, reference_classes, reference_pair_dice  # noqa: E402
from benchmarks.semantic_report import decoder_decision, reference_method, render_section  # noqa: E402
from training.data import class_map, load_raw_dataset  # noqa: E402
from training.semantic import class_names  # noqa: E402
from training.semantic_metrics import score_class_maps  # noqa: E402

SCRIPT = REPO_ROOT / "benchmarks" / "semantic_accuracy.py"
TASK = REPO_ROOT / "training" / "data" / "ct_abdomen_organs"
SMOKE = semantic_accuracy.SMOKE


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke benchmark through its CLI, then the same arguments again in-process (which must resume)."""
    return smoke_twice(SCRIPT, semantic_accuracy.main, tmp_path_factory.mktemp("semantic"), "semantic_accuracy.json")


def _test_references(split: str = "test") -> tuple[dict[int, str], list[np.ndarray]]:
    id2label = class_names(str(TASK), None)
    rows = load_raw_dataset(str(TASK), image_column="image", mask_column="mask", split=split)[split]
    masks = rows.select(range(SMOKE["max_eval_samples"]))["mask"]
    return id2label, [class_map(mask, sorted(id2label)) for mask in masks]


@pytest.mark.slow
def test_smoke_records_hold_what_the_report_needs(smoke):
    _, data, _ = smoke
    expected = {(m, s) for m in SMOKE["methods"] for s in SMOKE["seeds"]}
    assert {(r["method"], r["seed"]) for r in data["records"]} == expected
    id2label, references = _test_references()
    n_reference = sum(len(set(np.unique(m).tolist()) - {0}) for m in references)
    for record in data["records"]:
        assert math.isfinite(record["dice"]) and 0.0 <= record["dice"] <= 1.0
        assert record["train_steps"] == SMOKE["max_train_steps"] and record["n_images"] == SMOKE["max_eval_samples"]
        assert set(record["per_class_dice"]) <= set(id2label.values()) - {"background"}
        # The macro mean is the mean of the per-class means.
        assert record["dice"] == pytest.approx(np.mean(list(record["per_class_dice"].values())))
        assert len(record["per_pair_dice"]) == n_reference  # the same objects for every method: paired
        assert record["n_pairs"] == n_reference + record["false_positive_pairs"]
        assert record["settings"]["split"] == "train -> test"
    by_method = {r["method"]: r for r in data["records"]}
    assert by_method["icmoe"]["semantic_decoder"] == "mask_tokens"
    assert by_method["icmoe"]["trainable_encoder_params"] > 0 and by_method["unet"]["trainable_encoder_params"] is None
    prompted = by_method["icmoe_prompted"]
    assert prompted["prompt"] == "box" and prompted["false_positive_pairs"] == 0
    assert "never prompted" in prompted["counting"]


@pytest.mark.slow
def test_selection_uses_the_tasks_own_validation_split(smoke):
    _, data, _ = smoke
    for record in data["records"]:
        grid = [r for r in data["selection"] if r["method"] == record["method"]]
        assert sorted(r["learning_rate"] for r in grid) == sorted(SMOKE["lr_grid"])
        assert all(r["settings"]["split"] == "train -> validation" for r in grid)
        chosen = [r for r in grid if r["chosen"]]
        assert len(chosen) == 1 and chosen[0]["val_dice"] == max(r["val_dice"] for r in grid)
        assert record["learning_rate"] == chosen[0]["learning_rate"]


@pytest.mark.slow
def test_resume_runs_nothing_and_keeps_the_records(smoke):
    _, first, second = smoke
    assert first["invocation"]["runs_executed"] == len(SMOKE["methods"]) * (len(SMOKE["lr_grid"]) + 1)
    assert second["invocation"]["runs_executed"] == 0
    assert second["invocation"]["runs_reused"] == first["invocation"]["runs_executed"]
    assert second["records"] == first["records"] and second["selection"] == first["selection"]


@pytest.mark.slow
def test_unet_scores_are_the_metric_of_its_saved_predictions(smoke):
    folder, data, _ = smoke
    run = folder / "work" / "runs" / "ct_abdomen_organs" / "unet" / "seed0"
    predictions = np.load(run / "predictions.npz")["maps"]
    id2label, references = _test_references()
    assert predictions.shape == (len(references), *references[0].shape)  # the original size
    scores = score_class_maps(list(predictions), references, id2label)
    results = json.loads((run / "eval_results.json").read_text())
    record = next(r for r in data["records"] if r["method"] == "unet")
    assert results["dice"] == pytest.approx(scores["dice"]) and record["dice"] == pytest.approx(scores["dice"])
    assert results["per_image"]["dice"] == pytest.approx(scores["per_pair"]["dice"], abs=1e-6)
    # The reference pairs found among the scored ones are those the image ids name.
    pairs = scores["per_pair"]
    present = [set(np.unique(m).tolist()) for m in references]
    expected = [d for image, c, d in zip(pairs["image"], pairs["class_id"], pairs["dice"]) if c in present[image]]
    assert record["per_pair_dice"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_prompted_upper_bound_is_counted_per_class_over_its_rows(smoke):
    folder, data, _ = smoke
    results = json.loads((folder / "work" / "runs" / "ct_abdomen_organs" / "icmoe_prompted" / "seed0" /
                          "eval_results.json").read_text())
    record = next(r for r in data["records"] if r["method"] == "icmoe_prompted")
    id2label, references = _test_references()
    row_classes = [c for m in references for c in sorted(set(np.unique(m).tolist()) - {0})]
    assert results["per_image"]["dice"] == pytest.approx(record["per_pair_dice"], abs=1e-5)
    for name, dice in record["per_class_dice"].items():
        rows = [d for c, d in zip(row_classes, results["per_image"]["dice"]) if id2label[c] == name]
        assert dice == pytest.approx(np.mean(rows))
    assert record["prompted_row_mean_dice"] == pytest.approx(np.mean(results["per_image"]["dice"]))


@pytest.mark.slow
def test_pairs_too_small_for_sams_labels_have_no_prompted_row(smoke):
    """The stand-in SAM's labels are 48 px: a class of a few pixels on a 128 px slice vanishes there, so the prompted
    dataset has no row for it (training could not use it, nor run.py score it)."""
    import datasets

    from training.data import survives_resize

    folder, _, _ = smoke
    (rows,) = (folder / "work" / "splits").glob("per_pair-*")
    pairs = json.loads((rows / "pair_rows.json").read_text())
    dataset = datasets.load_from_disk(str(rows))
    id2label, references = _test_references()
    first = [(image, c, survives_resize(references[image] == c, 48)) for image in range(len(references))
             for c in sorted(set(np.unique(references[image]).tolist()) - {0})]
    assert [tuple(p) for p in pairs["test"][: len(first)]] == first
    for split in ("train", "validation", "test"):
        assert len(dataset[split]) == sum(has_row for _, _, has_row in pairs[split])
    assert sum(not has_row for split in pairs.values() for _, _, has_row in split) > 0  # some are that small


@pytest.mark.slow
def test_report_has_the_tables(smoke):
    folder, data, _ = smoke
    report = (folder / "BENCHMARKS.md").read_text()
    assert report.count("<!-- semantic_accuracy:begin -->") == 1 and report.count("<!-- semantic_accuracy:end -->") == 1
    for method in SMOKE["methods"]:
        assert f"| ct_abdomen_organs | {method} | 1 | " in report  # results table
        assert f"| ct_abdomen_organs | icmoe | {method} |" in report or method == "icmoe"  # paired
    assert "| task | method | liver | spleen | kidney_right | kidney_left | aorta |" in report
    assert "### Learning-rate selection" in report and "### The prompted upper bound" in report
    assert "`lora_matched`: rank" in report
    assert (folder / "figures" / "semantic_accuracy.png").is_file()


@pytest.mark.parametrize(
    ("classes", "dice", "references", "expected"),
    [
        # Image 0 holds 1 and 2, image 1 holds 2; a false positive of class 3 on image 0.
        ([1, 2, 3, 2], [0.9, 0.8, 0.0, 0.7], [(1, 2), (2,)], [0.9, 0.8, 0.7]),
        # A false positive of class 2 on image 1 (no reference there), image 2's 2 missed.
        ([1, 2, 2], [0.5, 0.0, 0.0], [(1,), (), (2,)], [0.5, 0.0]),
        # Image 0 empty, image 1 holds 2, image 2 empty: the 0.6 cannot be a false positive, so the 0.0 is one.
        ([2, 2], [0.0, 0.6], [(), (2,), ()], [0.6]),
        # Two fits that disagree: (image 0 false positive, image 1 0.5, image 3 0.0) or (image 1 0.0, image 3 0.5,
        # image 4 false positive).
        ([2, 2, 2], [0.0, 0.5, 0.0], [(), (2,), (), (2,), ()], None),
    ],
)
def test_reference_pairs_are_found_among_the_scored_ones(classes, dice, references, expected):
    assert reference_pair_dice(classes, dice, references) == expected


def test_reference_pairs_of_random_maps_are_those_the_image_ids_name():
    """Random reference and predicted maps (some classes missed, some predicted where absent), scored by the
    project's function, which also returns each pair's image: the reference pairs found from the classes alone are
    those."""
    rng = np.random.default_rng(0)
    id2label = {0: "background", 1: "a", 2: "b", 3: "c"}
    references, predictions = [], []
    for _ in range(30):
        reference = np.zeros((6, 6), np.uint8)
        for class_id in rng.choice([1, 2, 3], size=rng.integers(0, 4), replace=False):
            reference[rng.integers(0, 6), :] = class_id
        prediction = np.where(rng.random((6, 6)) < 0.7, reference, rng.integers(0, 4, (6, 6))).astype(np.uint8)
        references.append(reference)
        predictions.append(prediction)
    pairs = score_class_maps(predictions, references, id2label)["per_pair"]
    present = [tuple(int(v) for v in np.unique(r) if v) for r in references]
    expected = [d for image, c, d in zip(pairs["image"], pairs["class_id"], pairs["dice"]) if c in present[image]]
    assert len(pairs["dice"]) > len(expected)  # there are false positives to tell apart
    assert reference_pair_dice(pairs["class_id"], pairs["dice"], present) == pytest.approx(expected)


def test_scored_pairs_of_other_references_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        reference_pair_dice([1, 3], [0.9, 0.4], [(1,), (2,)])  # class 3 scored 0.4 but absent: not a false positive


def test_reference_classes_are_read_in_row_order():
    present = reference_classes(TASK, "test", list(range(6)), limit=3)
    _, references = _test_references()
    assert present == [tuple(int(v) for v in np.unique(m) if v) for m in references[:3]]


def test_objects_without_a_score_are_left_out_of_the_paired_difference():
    from benchmarks.accuracy_report import paired_difference

    def records(method: str, dice: list) -> list[dict]:
        return [{"method": method, "seed": 0, "per_pair_dice": dice}]

    left_out = paired_difference(records("icmoe", [0.9, 0.5, 0.7]), records("icmoe_prompted", [None, 0.4, 0.6]),
                                 key="per_pair_dice")
    assert left_out == pytest.approx((0.1, 0.1, 0.1))


def test_class_means_of_rows_are_macro_averages():
    scores = class_means_of_rows([1, 1, 2], {"dice": [0.2, 0.4, 0.9], "iou": [0.1, 0.3, 0.8], "hd95": [4.0, 2.0, 1.0]},
                                 {0: "background", 1: "a", 2: "b"})
    assert scores["per_class"]["a"]["dice"] == pytest.approx(0.3) and scores["per_class"]["a"]["n_images"] == 2
    assert scores["dice"] == pytest.approx(0.6) and scores["hd95"] == pytest.approx(2.0)


def _selection(method: str, lr: float, dice: float, chosen: bool) -> dict:
    return {"dataset": "t", "method": method, "seed": 0, "learning_rate": lr, "val_dice": dice, "chosen": chosen}


def test_the_better_decoder_on_validation_is_the_reference():
    data = {"protocol": {"tasks": {"t": {"prompt": "none", "path": "t"}}}, "records": [], "selection": [
        _selection("icmoe", 1e-3, 0.50, True), _selection("icmoe", 3e-3, 0.40, False),
        _selection("icmoe_queries", 1e-3, 0.55, True)]}
    assert decoder_decision(data, "t") == ("icmoe_queries", {"icmoe": 0.50, "icmoe_queries": 0.55})
    assert reference_method(data, "t") == "icmoe_queries"
    data["selection"] = data["selection"][:2]
    assert decoder_decision(data, "t") is None and reference_method(data, "t") == "icmoe"
    record = {"dataset": "t", "seed": 0, "learning_rate": 1e-3, "dice": 0.5, "iou": 0.4, "hd95": 3.0,
              "false_positive_pairs": 0, "train_seconds": 1.0, "train_steps": 2, "trainable_params": 10,
              "trainable_encoder_params": 5, "per_class_dice": {"a": 0.5}, "per_pair_dice": [0.5, 0.6]}
    data["selection"].append(_selection("icmoe_queries", 1e-3, 0.55, True))
    data["records"] = [{**record, "method": "icmoe"},
                       {**record, "method": "icmoe_queries", "per_pair_dice": [0.7, 0.6]}]
    section = render_section(data, None)
    assert "-> `icmoe_queries` (queries) is the reference" in section
    assert "| t | icmoe_queries | icmoe | 1 / 1 | 2 | +0.1000 |" in section


def test_the_prompted_task_list_is_unchanged():
    prompted = json.loads((REPO_ROOT / "benchmarks" / "tasks" / "tasks.json").read_text())
    assert all(task["prompt"] != "none" for task in prompted)
    semantic = semantic_accuracy.SemanticBenchmark.load_tasks(None)
    assert [t["name"] for t in semantic] == ["ct_abdomen_organs"] and all(t["prompt"] == "none" for t in semantic)
