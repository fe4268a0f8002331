"""The accuracy benchmark end to end (`--smoke`, through its CLI) and its grouped validation split."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from helpers import smoke_args, smoke_twice

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "accuracy.py"
RECORD_FIELDS = ("dataset", "method", "seed", "learning_rate", "dice", "iou", "hd95", "dice_std", "trainable_params",
                 "trainable_encoder_params", "train_steps", "train_seconds")


def _load_harness():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


accuracy = _load_harness()


def _smoke_args(folder: Path) -> list[str]:
    return smoke_args(folder, "accuracy.json")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke benchmark through its CLI, then the same arguments again in-process (which must resume)."""
    return smoke_twice(SCRIPT, accuracy.main, tmp_path_factory.mktemp("accuracy"), "accuracy.json")


@pytest.mark.slow
def test_smoke_records_every_method_and_seed(smoke):
    _, data, _ = smoke
    expected = {(m, s) for m in accuracy.SMOKE["methods"] for s in accuracy.SMOKE["seeds"]}
    assert {(r["method"], r["seed"]) for r in data["records"]} == expected
    for record in data["records"]:
        assert set(RECORD_FIELDS) <= set(record), record
        assert math.isfinite(record["dice"]) and 0.0 <= record["dice"] <= 1.0
        trained = record["method"] != "zeroshot"
        assert record["train_steps"] == (accuracy.SMOKE["max_train_steps"] if trained else 0)
        assert (record["learning_rate"] is not None) == trained
        assert len(record["per_image_dice"]) == record["n_images"]
        assert sum(record["per_image_dice"]) / record["n_images"] == pytest.approx(record["dice"], abs=1e-4)
    assert data["invocation"]["runs_executed"] == 7  # zeroshot + (2 lrs + 1 seed) for adapter and icmoe


@pytest.mark.slow
def test_learning_rate_is_chosen_by_validation_dice(smoke):
    _, data, _ = smoke
    for record in data["records"]:
        if record["method"] == "zeroshot":
            continue
        grid = [r for r in data["selection"] if (r["dataset"], r["method"]) == (record["dataset"], record["method"])]
        assert sorted(r["learning_rate"] for r in grid) == sorted(accuracy.SMOKE["lr_grid"])
        assert all(r["settings"]["split"].endswith("validation") for r in grid)
        best = max(r["val_dice"] for r in grid)
        chosen = [r for r in grid if r["chosen"]]
        assert len(chosen) == 1 and chosen[0]["val_dice"] == best
        assert record["learning_rate"] == chosen[0]["learning_rate"]


@pytest.mark.slow
def test_matched_ranks_are_within_tolerance(smoke):
    _, data, _ = smoke
    matched = data["protocol"]["matched_ranks"]
    target = matched["icmoe_encoder_params"]
    assert target > 0
    for kind in ("lora", "adapter"):
        assert matched[f"{kind}_rank"] >= 1
        assert abs(matched[f"{kind}_encoder_params"] - target) <= 0.2 * target


@pytest.mark.slow
def test_resume_runs_nothing_and_keeps_the_records(smoke):
    _, first, second = smoke
    assert second["invocation"]["runs_executed"] == 0
    assert second["invocation"]["runs_reused"] == first["invocation"]["runs_executed"]
    assert second["records"] == first["records"] and second["selection"] == first["selection"]


@pytest.mark.slow
def test_report_has_the_tables_and_the_figure(smoke):
    folder, data, _ = smoke
    report = (folder / "BENCHMARKS.md").read_text()
    assert report.count(accuracy.MARK_BEGIN) == 1 and report.count(accuracy.MARK_END) == 1
    for record in data["records"]:
        assert f"| {record['dataset']} | {record['method']} | 1 |" in report
    assert "figures/accuracy.png" in report and (folder / "figures" / "accuracy.png").is_file()
    task = data["records"][0]["dataset"]
    assert "### Paired comparison" in report
    for method in ("zeroshot", "adapter"):
        assert f"| {task} | icmoe | {method} | 1 / 1 |" in report


def test_paired_comparisons_pair_methods_with_icmoe_and_ablations_with_their_reference():
    pairs = accuracy.paired_comparisons(["icmoe", "lora_matched", "icmoe_round4", "icmoe_no_basic", "adapter"])
    assert pairs == [("icmoe", "lora_matched"), ("icmoe", "adapter"), ("icmoe_round4", "icmoe"),
                     ("icmoe_round4", "icmoe_no_basic")]
    assert accuracy.paired_comparisons(["lora", "adapter"]) == []


def _records(method: str, per_seed: list[list[float]]) -> list[dict]:
    return [{"dataset": "task", "method": method, "seed": seed, "per_image_dice": dice}
            for seed, dice in enumerate(per_seed)]


def test_paired_difference_separates_a_consistent_lead_from_seed_noise():
    objects = [0.5, 0.6, 0.7, 0.8, 0.9, 0.55, 0.65, 0.75]
    lead = accuracy.paired_difference(_records("icmoe", [[d + 0.05 for d in objects]] * 3),
                                      _records("lora", [objects] * 3))
    assert lead[0] == pytest.approx(0.05) and lead[1] == pytest.approx(0.05) and lead[2] == pytest.approx(0.05)
    # Seeds that disagree by more than the difference: the interval spans 0.
    noisy = accuracy.paired_difference(_records("icmoe", [[d + 0.1 for d in objects], [d - 0.08 for d in objects]]),
                                       _records("lora", [objects, objects]))
    assert noisy[0] == pytest.approx(0.01) and noisy[1] < 0 < noisy[2]
    # Objects that disagree: ahead on half of the objects, behind on the other half.
    mixed = accuracy.paired_difference(
        _records("icmoe", [[d + (0.2 if i % 2 else -0.2) for i, d in enumerate(objects)]] * 2),
        _records("lora", [objects] * 2))
    assert mixed[0] == pytest.approx(0.0, abs=1e-12) and mixed[1] < 0 < mixed[2]
    # On these objects alone the seeds agree exactly: the seed-only interval is the point.
    on_these = accuracy.paired_difference(
        _records("icmoe", [[d + (0.2 if i % 2 else -0.2) for i, d in enumerate(objects)]] * 2),
        _records("lora", [objects] * 2), resample_objects=False)
    assert on_these == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    # Consistent over seeds, carried by one object: ahead on these objects, not separable beyond them.
    skewed = [[d + (0.3 if i == 0 else -0.02) for i, d in enumerate(objects)]] * 3
    beyond = accuracy.paired_difference(_records("icmoe", skewed), _records("lora", [objects] * 3))
    here = accuracy.paired_difference(_records("icmoe", skewed), _records("lora", [objects] * 3),
                                      resample_objects=False)
    assert beyond[0] == pytest.approx(0.02) and beyond[1] < 0 < beyond[2]
    assert here == pytest.approx((0.02, 0.02, 0.02))


def test_paired_difference_refuses_unpaired_records():
    with pytest.raises(ValueError, match="different test splits"):
        accuracy.paired_difference(_records("icmoe", [[0.5, 0.6]]), _records("lora", [[0.5, 0.6, 0.7]]))
    with pytest.raises(ValueError, match="per_image_dice"):
        accuracy.paired_difference(_records("icmoe", [[0.5]]), [{"dataset": "task", "method": "lora", "seed": 0}])


def test_a_side_results_file_gets_its_own_section(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text(f"# Benchmarks\n\n{accuracy.MARK_BEGIN}\nmain section\n{accuracy.MARK_END}\n")
    data = {"protocol": {}, "selection": [], "records": []}
    accuracy.write_report(data, report, "accuracy_ten_seeds")
    accuracy.write_report(data, report, "accuracy_ten_seeds")  # rewritten in place, not appended again
    text = report.read_text()
    assert "main section" in text
    begin, end = accuracy.markers("accuracy_ten_seeds")
    assert text.count(begin) == 1 and text.count(end) == 1 and "## Accuracy: `accuracy_ten_seeds.json`" in text


def test_report_keeps_text_outside_the_markers(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text(f"# Benchmarks\n\nCost section.\n\n{accuracy.MARK_BEGIN}\nold\n{accuracy.MARK_END}\n\nAfter.\n")
    data = {"protocol": {}, "selection": [], "records": []}
    accuracy.write_report(data, report)
    text = report.read_text()
    assert "Cost section." in text and "After." in text and "old" not in text


def test_grouped_validation_split_keeps_images_whole_and_is_deterministic():
    rows_per_image = {f"img{i}.png": 1 + i % 4 for i in range(15)}
    groups = [name for name, count in rows_per_image.items() for _ in range(count)]
    train, validation = accuracy.grouped_validation_split(groups, fraction=0.2, seed=0)
    assert sorted(train + validation) == list(range(len(groups)))
    assert not {groups[i] for i in train} & {groups[i] for i in validation}
    assert abs(len(validation) - 0.2 * len(groups)) <= max(rows_per_image.values())
    assert (train, validation) == accuracy.grouped_validation_split(groups, fraction=0.2, seed=0)
    # The row order does not matter: the same images are held out.
    reordered = groups[::-1]
    _, held_out = accuracy.grouped_validation_split(reordered, fraction=0.2, seed=0)
    assert {reordered[i] for i in held_out} == {groups[i] for i in validation}


@pytest.mark.parametrize("variant", sorted(accuracy.ICMOE_VARIANTS))
def test_every_icmoe_variant_is_a_valid_config(variant):
    config = accuracy.icmoe_variant_config(accuracy.ICMOE_VARIANTS[variant])
    routed = sum(getattr(config, name) for name in accuracy.ROUTED_EXPERT_FIELDS)
    assert 1 <= config.num_experts_per_tok <= routed
    if variant == "icmoe_dense":
        assert config.num_experts_per_tok == routed


@pytest.mark.parametrize("variant", sorted(set(accuracy.ICMOE_VARIANTS) - {"icmoe"}))
def test_every_icmoe_variant_differs_from_the_default(variant):
    """An ablation or candidate that the default has absorbed would measure the default again under another name."""
    default = accuracy.icmoe_variant_config({}).to_dict()
    assert accuracy.icmoe_variant_config(accuracy.ICMOE_VARIANTS[variant]).to_dict() != default


def test_processes_on_different_pairs_share_one_results_file(tmp_path):
    path = tmp_path / "accuracy.json"

    def state(task: str, method: str, value: int) -> dict:
        record = {"dataset": task, "method": method, "dice": value}
        return {"protocol": {"tasks": {task: {}}}, "selection": [], "records": [record]}

    first, second, third = state("a", "icmoe", 1), state("b", "icmoe", 2), state("a", "lora", 3)
    accuracy.save(first, path, {("a", "icmoe")})
    accuracy.save(second, path, {("b", "icmoe")})
    accuracy.save(third, path, {("a", "lora")})
    first["records"] = [{"dataset": "a", "method": "icmoe", "dice": 4}]  # a process replaces its own records ...
    accuracy.save(first, path, {("a", "icmoe")})
    data = json.loads(path.read_text())
    records = sorted((r["dataset"], r["method"], r["dice"]) for r in data["records"])
    assert records == [("a", "icmoe", 4), ("a", "lora", 3), ("b", "icmoe", 2)]  # ... never another's
    assert set(data["protocol"]["tasks"]) == {"a", "b"}


def test_default_learning_rate_is_the_best_mean_over_tasks():
    def row(task: str, lr: float, dice: float) -> dict:
        return {"dataset": task, "method": "lora", "learning_rate": lr, "val_dice": dice}

    selection = [row("a", 1e-4, 0.9), row("a", 1e-3, 0.5), row("b", 1e-4, 0.4), row("b", 1e-3, 0.7), row("b", 1e-2, 1.0)]
    best = accuracy.best_mean_learning_rates({"selection": selection})
    # 1e-4 averages 0.65 and 1e-3 0.6 over both tasks; 1e-2 ran on one task only and does not compete.
    assert best == {"lora": (1e-4, pytest.approx(0.65), ["a", "b"])}


def test_committed_records_carry_every_adapter_field():
    """A run is reused only when its recorded settings equal what the current code would run, adapter config
    included: a field added to `IcMoeAdapterConfig` without adding it (with the value those runs used) to the live
    results files would make the documented commands train every IC-MoE run again."""
    from modeling_icmoe import IcMoeAdapterConfig

    fields = set(IcMoeAdapterConfig().to_dict())
    results = REPO_ROOT / "benchmarks" / "results"
    live = ["accuracy.json", "accuracy_ablations_own_rate.json", "accuracy_five_seeds.json", "icmoe_search_round9.json",
            "icmoe_search_round10.json", "icmoe_search_round10_seeds23.json", "accuracy_bridge_candidate.json",
            "accuracy_ten_seeds.json", "accuracy_ablations_paired.json"]
    for name in live:
        data = json.loads((results / name).read_text())
        configs = [r["settings"]["icmoe_config"] for kind in ("selection", "records") for r in data[kind]
                   if r["settings"]["icmoe_config"] is not None]
        assert configs, name
        for config in configs:
            assert set(config) == fields, (name, set(config) ^ fields)


def test_run_defaults_are_the_recorded_best_learning_rates():
    """`training/run.py`'s default rate of each method is the one the committed benchmark measured best on average."""
    from training.methods import DEFAULT_LEARNING_RATES

    data = json.loads((REPO_ROOT / "benchmarks" / "results" / "accuracy.json").read_text())
    best = accuracy.best_mean_learning_rates(data)
    for method in ("decoder", "lora", "adapter", "full", "icmoe"):
        assert best[method][0] == DEFAULT_LEARNING_RATES[method], method


@pytest.mark.slow
def test_selection_only_averages_over_seeds_and_never_touches_the_test_split(tmp_path):
    args = _smoke_args(tmp_path) + ["--methods", "zeroshot", "adapter", "--selection_only", "--selection_seeds", "0", "1"]
    accuracy.main(args)
    data = json.loads((tmp_path / "accuracy.json").read_text())
    assert data["records"] == []  # not even zero-shot: nothing is scored on the test split
    grid = data["selection"]
    assert sorted((r["learning_rate"], r["seed"]) for r in grid) == sorted(
        (lr, seed) for lr in accuracy.SMOKE["lr_grid"] for seed in (0, 1))
    assert all(r["settings"]["split"].endswith("validation") for r in grid)
    means = {lr: sum(r["val_dice"] for r in grid if r["learning_rate"] == lr) / 2 for lr in accuracy.SMOKE["lr_grid"]}
    chosen = {r["learning_rate"] for r in grid if r["chosen"]}
    assert chosen == {max(means, key=means.get)}
    assert len([r for r in grid if r["chosen"]]) == 2  # both seeds of the chosen rate


@pytest.mark.slow
def test_a_one_value_grid_runs_no_selection(tmp_path):
    accuracy.main(_smoke_args(tmp_path) + ["--methods", "adapter", "--lr_grid", "1e-3"])
    data = json.loads((tmp_path / "accuracy.json").read_text())
    assert data["selection"] == []
    assert [(r["method"], r["learning_rate"]) for r in data["records"]] == [("adapter", 1e-3)]


def test_matched_ranks_can_start_from_another_results_file(tmp_path):
    """A new results file (more seeds, say) can start with the matched ranks of the main one, so that its matched
    baselines are the same models; a missing file or one without ranks is refused by name."""
    source = tmp_path / "main.json"
    ranks = accuracy.matched_ranks(str(accuracy.DEFAULT_BASE_MODEL))
    kept = {**ranks, "lora_rank": ranks["lora_rank"] + 1}  # one rank up stays within the 20 % tolerance
    source.write_text(json.dumps({"protocol": {"matched_ranks": kept}, "selection": [], "records": []}))
    folder = tmp_path / "extra"
    accuracy.main(_smoke_args(folder) + ["--methods", "zeroshot", "--matched_ranks_from", str(source)])
    assert json.loads((folder / "accuracy.json").read_text())["protocol"]["matched_ranks"]["lora_rank"] == (
        ranks["lora_rank"] + 1)
    with pytest.raises(SystemExit, match="no results file"):
        accuracy.main(_smoke_args(tmp_path / "other") + ["--methods", "zeroshot", "--matched_ranks_from",
                                                           str(tmp_path / "absent.json")])
    source.write_text(json.dumps({"protocol": {}, "selection": [], "records": []}))
    with pytest.raises(SystemExit, match="records no matched ranks"):
        accuracy.main(_smoke_args(tmp_path / "third") + ["--methods", "zeroshot", "--matched_ranks_from", str(source)])
    source.write_text('{"protocol": ')
    with pytest.raises(SystemExit, match="is not JSON"):
        accuracy.main(_smoke_args(tmp_path / "fourth") + ["--methods", "zeroshot", "--matched_ranks_from", str(source)])


def test_gated_linear_preset_is_the_measured_candidate():
    """`configuration/icmoe/gated_linear.json` is the config whose test Dice docs/METHOD.md reports for it."""
    from training.methods import load_icmoe_config

    preset = load_icmoe_config(str(REPO_ROOT / "configuration" / "icmoe" / "gated_linear.json"), {})
    measured = accuracy.icmoe_variant_config(accuracy.ICMOE_VARIANTS["bridge_split_linear_dense_rs5"])
    assert preset.to_dict() == measured.to_dict()
    recorded = json.loads((REPO_ROOT / "benchmarks" / "results" / "accuracy_bridge_candidate.json").read_text())
    assert all(r["settings"]["icmoe_config"] == preset.to_dict() for r in recorded["records"])
