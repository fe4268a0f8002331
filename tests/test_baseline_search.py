"""The baselines' configuration search and the fresh test set of the accuracy benchmark: candidates are one change
from a main method, matched again where they change what is adapted, tried at the rates their reference chose;
validation rows are train rows (by content); a fresh test set shares no image with the data choices were made on,
and is scored once."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import harness
from benchmarks.accuracy_methods import (
    BASELINE_CANDIDATES,
    MATCH_TOLERANCE,
    MATCHED_RANK,
    REMATCHED_OPTIONS,
    matched_ranks,
    method_run_args,
)
from helpers import smoke_args
from training.arguments import DEFAULT_BASE_MODEL, parse_args

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS = {task["name"]: task for task in json.loads((REPO_ROOT / "benchmarks/tasks/tasks.json").read_text())}


def _image_hashes(folder: Path, split: str | None = None) -> set[str]:
    """Content hashes of the decoded pixels of a task folder's images (of one split)."""
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if split is None or (row.get("split") or "train") == split]
    return {hashlib.sha1(Image.open(folder / row["file_name"]).convert("L").tobytes()).hexdigest() for row in rows}


def _dataset_hashes(dataset) -> set[str]:
    return {hashlib.sha1(image.convert("L").tobytes()).hexdigest() for image in dataset["image"]}


@pytest.fixture(scope="module")
def ranks():
    return matched_ranks(str(DEFAULT_BASE_MODEL))


def test_every_candidate_is_one_named_change_of_a_main_method_that_run_py_accepts(ranks):
    for name, (reference, options) in BASELINE_CANDIDATES.items():
        assert name.startswith(reference) and options, name
        argv, _, info = method_run_args(name, ranks)
        args = parse_args(argv)  # run.py accepts every candidate's arguments
        if "lora_alpha_per_rank" in options:
            assert args.lora_alpha == options["lora_alpha_per_rank"] * args.lora_rank
        for key, value in options.items():
            if key != "lora_alpha_per_rank":
                assert getattr(args, key) == value, (name, key)
        assert info["baseline_options"]


def test_candidates_that_change_what_is_adapted_are_matched_again(ranks):
    """LoRA on more layers or an adapter beside qkv at the reference's rank would hold other parameter counts: those
    candidates get their own rank, within the tolerance of IC-MoE's budget; the others keep the reference's."""
    target = ranks["icmoe_encoder_params"]
    for name, (reference, options) in BASELINE_CANDIDATES.items():
        if reference not in MATCHED_RANK:
            continue
        kind = MATCHED_RANK[reference]
        _, _, info = method_run_args(name, ranks)
        if any(key in options for key in REMATCHED_OPTIONS):
            variant = ranks["variants"][name]
            assert abs(variant["encoder_params"] - target) <= MATCH_TOLERANCE * target
            assert info[f"{kind}_rank"] == variant["rank"] != ranks[f"{kind}_rank"]
        else:
            assert info[f"{kind}_rank"] == ranks[f"{kind}_rank"]


def _selection_file(path: Path, rows: list[tuple[str, str, float, float]]) -> Path:
    records = [{"dataset": task, "method": method, "learning_rate": lr, "val_dice": dice, "seed": 0}
               for task, method, lr, dice in rows]
    path.write_text(json.dumps({"protocol": {}, "selection": records, "records": []}))
    return path


def test_rates_from_other_files_take_the_method_itself_before_its_reference(tmp_path):
    main = _selection_file(tmp_path / "main.json", [
        ("t", "lora_matched", 1e-4, 0.70), ("t", "lora_matched", 3e-4, 0.75), ("t", "lora_matched", 1e-3, 0.72)])
    search = _selection_file(tmp_path / "search.json", [
        ("t", "lora_matched_all", 3e-4, 0.71), ("t", "lora_matched_all", 1e-3, 0.78)])
    assert harness.best_recorded_rates([main], "t", ["lora_matched_all", "lora_matched"], 2) == (3e-4, 1e-3)
    assert harness.best_recorded_rates([main, search], "t", ["lora_matched_all", "lora_matched"], 1) == (1e-3,)
    with pytest.raises(SystemExit, match="no validation runs of full on t"):
        harness.best_recorded_rates([main], "t", ["full"], 2)


def test_validation_rows_are_train_rows_by_content(tmp_path):
    """The carved validation split holds images of the task's train split (compared by pixels, not by the split
    name the harness writes), none of its test split, and train and validation share no image."""
    import datasets

    task = TASKS["mr_brain_lesion"]
    folder, _ = harness.validation_dataset(task, tmp_path)
    splits = datasets.load_from_disk(str(folder))
    train, validation = _dataset_hashes(splits["train"]), _dataset_hashes(splits["validation"])
    task_dir = REPO_ROOT / task["path"]
    assert validation and train
    assert validation | train == _image_hashes(task_dir, "train")
    assert not validation & train
    assert not validation & _image_hashes(task_dir, "test")


@pytest.mark.parametrize("name", ["mr_brain_lesion", "us_lesion"])
def test_the_fresh_test_set_is_new_and_drawn_like_the_old_one(name):
    """100 new samples, none equal to any image the benchmark trained, validated or was developed on, named apart
    from them, with masks of the same kind (one object, {0, 255})."""
    import numpy as np

    fresh = harness.fresh_test_folder(TASKS[name])
    task_dir = REPO_ROOT / TASKS[name]["path"]
    hashes = _image_hashes(fresh)
    assert len(hashes) == 100
    assert not hashes & _image_hashes(task_dir)
    with open(fresh / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {row["split"] for row in rows} == {"test"}
    assert all("_fresh_" in row["file_name"] for row in rows)
    values = np.unique(np.concatenate([np.unique(np.array(Image.open(fresh / r["mask_file_name"]))) for r in rows]))
    assert values.tolist() == [0, 255]


def test_a_task_without_a_fresh_test_set_is_refused_by_name():
    with pytest.raises(SystemExit, match="dsb2018_nuclei has no fresh test set"):
        harness.fresh_test_folder(TASKS["dsb2018_nuclei"])


@pytest.mark.slow
def test_the_fresh_test_set_is_scored_once(tmp_path):
    """Scored on the fresh set (train -> fresh test), at the rate read from another file without a validation run;
    the same slot scored again with other settings is refused instead of replaced."""
    from benchmarks import accuracy

    rates = _selection_file(tmp_path / "rates.json", [("mr_brain_lesion", "adapter", 1e-3, 0.7)])
    args = smoke_args(tmp_path, "accuracy.json") + ["--tasks", "mr_brain_lesion", "--methods", "adapter",
                                                     "--test_set", "fresh", "--lr_grid_top", "1"]
    accuracy.main([*args, "--lr_grid_from", str(rates)])
    data = json.loads((tmp_path / "accuracy.json").read_text())
    assert data["selection"] == [] and data["protocol"]["test_set"] == "fresh"
    (record,) = data["records"]
    assert record["settings"]["split"] == "train -> fresh test" and record["learning_rate"] == 1e-3
    accuracy.main([*args, "--lr_grid_from", str(rates)])  # the same settings: reused, not a second look
    assert json.loads((tmp_path / "accuracy.json").read_text())["records"] == data["records"]
    _selection_file(rates, [("mr_brain_lesion", "adapter", 3e-3, 0.7)])
    with pytest.raises(SystemExit, match="scored once"):
        accuracy.main([*args, "--lr_grid_from", str(rates)])


def _search_data(tmp_path: Path, scores: dict[str, dict[str, float]]) -> dict:
    """A search results file whose reference runs live in another file (as the search reads them)."""
    reference = _selection_file(tmp_path / "main.json", [
        (task, method, 1e-3, dice) for method, tasks in scores.items() if method in ("lora_matched", "icmoe")
        for task, dice in tasks.items()])
    records = [{"dataset": task, "method": method, "learning_rate": 1e-3, "val_dice": dice, "seed": 0}
               for method, tasks in scores.items() if method not in ("lora_matched", "icmoe")
               for task, dice in tasks.items()]
    return {"protocol": {"selection_seeds": [0], "lr_grid_from": {"files": [str(reference)], "top": 2},
                         "matched_ranks": {"lora_rank": 51, "adapter_rank": 101}, "tasks": {"a": {}, "b": {}}},
            "selection": records, "records": []}


def test_each_baseline_takes_its_best_configuration_by_the_mean_over_tasks(tmp_path):
    from benchmarks.baseline_search_report import best_configurations, scores, search_section

    data = _search_data(tmp_path, {
        "lora_matched": {"a": 0.80, "b": 0.70},
        "lora_matched_alpha2": {"a": 0.79, "b": 0.73},  # lower on a, higher on average: taken
        "lora_matched_alpha4": {"a": 0.90},  # not scored on every task: not a choice
        "icmoe": {"a": 0.81, "b": 0.70},
    })
    assert best_configurations(data) == {"lora_matched": "lora_matched_alpha2"}
    text = "\n".join(search_section(data))
    assert "**lora_matched_alpha2**" in text and "| IC-MoE | the default" in text
    data = _search_data(tmp_path, {"lora_matched": {"a": 0.80, "b": 0.70},
                                   "lora_matched_alpha2": {"a": 0.70, "b": 0.80}})
    assert best_configurations(data) == {"lora_matched": "lora_matched"}  # a tie goes to the reference
    # The reference is scored on its candidates' rates and seeds only: its runs at a rate they did not try, or at
    # another seed, do not count, however high (and neither does a candidate's run at another seed).
    reference = Path(data["protocol"]["lr_grid_from"]["files"][0])
    saved = json.loads(reference.read_text())
    saved["selection"] += [{"dataset": task, "method": "lora_matched", "learning_rate": lr, "val_dice": 0.99, "seed": seed}
                           for task in ("a", "b") for lr, seed in ((1e-2, 0), (1e-3, 5))]
    reference.write_text(json.dumps(saved))
    data["selection"].append({"dataset": "a", "method": "lora_matched_alpha2", "learning_rate": 1e-3, "val_dice": 0.0,
                              "seed": 5})
    assert scores(data)["lora_matched"] == {"a": (0.80, 1e-3), "b": (0.70, 1e-3)}
    assert scores(data)["lora_matched_alpha2"]["a"] == (0.70, 1e-3)


def test_the_readme_results_are_rendered_from_the_fresh_test_file():
    """The README's results table is what its results file renders now (a stale number fails)."""
    from benchmarks.accuracy_report import markers
    from benchmarks.baseline_search_report import README_NAME, readme_results

    path = REPO_ROOT / "benchmarks" / "results" / "accuracy_fresh_test.json"
    readme = (REPO_ROOT / "README.md").read_text()
    begin, end = markers(README_NAME)
    assert begin in readme and path.is_file()
    published = begin + readme.split(begin, 1)[1].split(end, 1)[0] + end + "\n"
    assert published == readme_results(json.loads(path.read_text()), path.name)


def test_the_fresh_test_scored_the_configurations_the_search_chose():
    """The searched configurations on the fresh test sets are those the search's rule picks from its file (they were
    named in the command by hand)."""
    from benchmarks.baseline_search_report import best_configurations

    search = json.loads((REPO_ROOT / "benchmarks" / "results" / "baseline_search.json").read_text())
    fresh = json.loads((REPO_ROOT / "benchmarks" / "results" / "accuracy_fresh_test.json").read_text())
    scored = {r["method"] for r in fresh["records"]}
    chosen = best_configurations(search)
    assert set(chosen) == {"lora_matched", "adapter_matched", "full"}
    assert {m for m in scored if m in BASELINE_CANDIDATES} == {m for m in chosen.values() if m in BASELINE_CANDIDATES}
    assert set(chosen) <= scored  # the references too, for comparison


@pytest.mark.slow
def test_a_fresh_results_file_is_not_discarded_or_extended_with_other_settings(tmp_path):
    """--fresh would throw away a fresh test set's one use; a new seed of a method whose settings changed is a second
    look all the same."""
    from benchmarks import accuracy

    rates = _selection_file(tmp_path / "rates.json", [("mr_brain_lesion", "adapter", 1e-3, 0.7)])
    args = smoke_args(tmp_path, "accuracy.json") + ["--tasks", "mr_brain_lesion", "--methods", "adapter",
                                                     "--test_set", "fresh", "--lr_grid_top", "1",
                                                     "--lr_grid_from", str(rates)]
    accuracy.main(args)
    with pytest.raises(SystemExit, match="one use"):
        accuracy.main([*args, "--fresh"])
    _selection_file(rates, [("mr_brain_lesion", "adapter", 3e-3, 0.7)])
    with pytest.raises(SystemExit, match="scored once"):
        accuracy.main([*args, "--seeds", "1"])

