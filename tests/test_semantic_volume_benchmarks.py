"""The prompt-free volume scripts end to end at tiny settings: the cost comparison with the prompted path, and the
volumetric benchmark (clean-up decided on validation volumes, test runs, the prompted upper bound)."""

from __future__ import annotations

import json

import pytest

from benchmarks import semantic_cost, semantic_volumes


def test_cost_script_times_every_path_on_the_same_volume(tmp_path):
    output = tmp_path / "cost.json"
    report = semantic_cost.main(["--max_slices", "2", "--reps", "2", "--warmup", "0", "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    assert report["volume"]["slices"] == 2 and report["volume"]["prompts"] == 2 * report["volume"]["classes"]
    for name in semantic_cost.PATHS:
        entry = report["paths"][name]
        assert len(entry["times_s"]) == 2 and all(t > 0 for t in entry["times_s"])
        ratios = [t / p for t, p in zip(entry["times_s"], report["paths"]["prompted"]["times_s"])]
        assert entry["ratio_to_prompted"]["median"] == pytest.approx(sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2)


@pytest.mark.slow
def test_volume_benchmark_smoke(tmp_path):
    data = semantic_volumes.main(["--smoke", "--work_dir", str(tmp_path)])
    saved = json.loads((tmp_path / "semantic_volumes.json").read_text())
    assert saved["validation_volumes"] == data["validation_volumes"] and len(saved["validation_volumes"]) == 3
    selection = saved["selection"]["0"]
    assert {record["volume"] for record in selection["per_volume"]} == {
        name.removesuffix(".nii.gz") for name in saved["validation_volumes"]}
    # The decision follows its rule from the recorded numbers.
    gain = selection["dice_keep_largest_component"] - selection["dice"]
    assert saved["keep_largest_component"]["chosen"] == (gain > 0)
    icmoe, prompted = saved["test"]["icmoe/seed0"], saved["test"]["icmoe_prompted/seed0"]
    assert icmoe["predict_dice"] == pytest.approx(semantic_volumes.mean_dice(icmoe["per_volume"]))
    assert icmoe["run_volumes"]["n_volumes"] == 6 and prompted["run_volumes"]["n_cases"] > 0
    # A restart reuses what the file records.
    again = semantic_volumes.main(["--smoke", "--work_dir", str(tmp_path)])
    assert again["test"] == saved["test"]


def test_resolution_ceiling_is_exact_at_full_resolution_and_lower_when_coarse():
    import numpy as np

    from benchmarks.semantic_resolution_ceiling import ceiling
    from training.semantic_metrics import score_class_maps

    maps = [np.zeros((40, 32), np.uint8) for _ in range(2)]
    maps[0][5:20, 4:12] = 1
    maps[1][22:24, 3:30] = 2  # a thin bar: lost on a coarse grid
    names = {0: "background", 1: "a", 2: "b"}
    exact = score_class_maps(ceiling(maps, 3, 40, 40), maps, names)
    coarse = score_class_maps(ceiling(maps, 3, 40, 5), maps, names)
    assert exact["dice"] == 1.0 and coarse["per_class"]["b"]["dice"] < 0.5


def test_the_prompt_free_narrative_is_its_results_files():
    """The numbers of docs/BENCHMARKS.md's "Prompt-free: what the benchmark says" are the results files' numbers."""
    import numpy as np

    from published import between, document, flat, mean_std, results

    narrative = between(document("docs/BENCHMARKS.md"), "## Prompt-free: what the benchmark says",
                        "<!-- semantic_accuracy:begin")
    accuracy = results("semantic_accuracy.json")
    for method in ("icmoe_queries", "lora_matched", "adapter", "full", "decoder", "icmoe", "unet", "unet_own_budget",
                   "icmoe_prompted"):
        dice = [r["dice"] for r in accuracy["records"] if r["method"] == method]
        assert len(dice) == 3, method
        assert mean_std(dice) in narrative, method
    volumes = results("semantic_volumes.json")
    for method, label in (("icmoe", "Dice **{}"), ("icmoe_prompted", "\n  {}")):
        dice = [r["run_volumes"]["dice"] for r in volumes["test"].values() if r["method"] == method]
        assert label.format(mean_std(dice)) in narrative, method
    table = between(document("docs/BENCHMARKS.md"), "<!-- semantic_volumes:begin -->", "<!-- semantic_volumes:end -->")
    assert table.removeprefix("<!-- semantic_volumes:begin -->").strip() == semantic_volumes.report(volumes)
    adapter = volumes["paired"]["adapter"]["per_seed_difference"]
    assert f"per seed the difference ranges from {min(adapter):.3f} to {max(adapter):+.3f}" in flat(narrative)
    gains = volumes["keep_largest_component"]["validation_gain_per_seed"]
    assert f"+{gains[0]:.4f} and +{gains[1]:.4f}" in narrative
    icmoe = [r for r in volumes["test"].values() if r["method"] == "icmoe"]
    change = np.mean([r["predict_dice_keep_largest_component"] - r["predict_dice"] for r in icmoe])
    assert f"lowered it by {-change:.4f}" in narrative
    for name, row in (("semantic_cost_cpu.json", "| stand-in SAM"), ("semantic_cost_cpu_vit_b.json", "| SAM ViT-B")):
        paths = results(name)["paths"]
        cells = " | ".join(f"{paths[d]['ratio_to_prompted']['median']:.2f}x [{paths[d]['ratio_to_prompted']['min']:.2f}, "
                           f"{paths[d]['ratio_to_prompted']['max']:.2f}]" for d in ("mask_tokens", "queries"))
        line = next(line for line in narrative.splitlines() if line.startswith(row))
        assert line.endswith(f"| {cells} |"), (line, cells)


@pytest.mark.slow
def test_volume_baselines_smoke(tmp_path):
    """The baselines' path: each trains on the training volumes at the rate the 2-D benchmark chose for it, is scored
    per volume by its own run, and is paired with IC-MoE on the (volume, class) pairs both score."""
    data = semantic_volumes.main(["--smoke", "--no_prompted", "--baselines", "unet", "decoder",
                                  "--work_dir", str(tmp_path)])
    rates, _ = semantic_volumes.chosen_rates(semantic_volumes.RATES_FROM)
    for method in ("unet", "decoder"):
        record = data["test"][f"{method}/seed0"]
        assert record["learning_rate"] == rates[method] == data["baselines"]["rates"][method]
        assert record["run_volumes"]["n_volumes"] == 6 and len(record["per_volume"]) == 6
        assert record["run_dice"] == pytest.approx(record["run_volumes"]["dice"], abs=1e-4)
        pair = data["paired"][method]
        assert pair["volumes"] == 1 and pair["seeds"] == [0]  # the smoke's IC-MoE predicts one test volume
    assert data["test"]["unet/seed0"]["train_steps"] == 2
    rows = semantic_volumes.report(data).splitlines()[2:]
    assert len(rows) == len({r["method"] for r in data["test"].values()})
    unet = next(row for row in rows if row.startswith("| U-Net from scratch, same steps |"))
    assert unet.endswith(f"| {data['paired']['unet']['difference']:+.3f} [{data['paired']['unet']['ci95'][0]:+.3f}, "
                         f"{data['paired']['unet']['ci95'][1]:+.3f}] |")


def test_paired_difference_on_known_scores():
    def record(method, seed, scores):
        return {"method": method, "seed": seed,
                "per_volume": [{"volume": v, "dice": dice} for v, dice in scores.items()]}

    test = {
        "icmoe/seed0": record("icmoe", 0, {"a": {"x": 0.8, "y": 0.6}, "b": {"x": 0.7, "y": 0.5}}),
        "icmoe/seed1": record("icmoe", 1, {"a": {"x": 0.9, "y": 0.6}, "b": {"x": 0.7, "y": 0.7}}),
        "base/seed0": record("base", 0, {"a": {"x": 0.5, "y": 0.6}, "b": {"x": 0.6, "y": 0.5}}),
        "base/seed1": record("base", 1, {"a": {"x": 0.6, "y": 0.4}, "b": {"x": 0.6}}),  # b/y: no pair of its own
        "base/seed2": record("base", 2, {"a": {"x": 0.0, "y": 0.0}, "b": {"x": 0.0, "y": 0.0}}),  # no IC-MoE seed 2
    }
    pair = semantic_volumes.paired_difference(test, "base")
    assert pair["seeds"] == [0, 1] and pair["pairs"] == 3 and pair["volumes"] == 2
    # per pair over seeds: a/x 0.3, a/y 0.1, b/x 0.1; per class over volumes: x 0.2, y 0.1; over classes 0.15
    assert pair["difference"] == pytest.approx(0.15)
    assert pair["ci95"][0] <= pair["difference"] <= pair["ci95"][1]
    # seed 0: (x 0.75, y 0.6) against (x 0.55, y 0.6); seed 1: (x 0.8, y 0.6) against (x 0.6, y 0.4)
    assert pair["per_seed_difference"] == pytest.approx([0.1, 0.2])
    assert semantic_volumes.paired_difference(test, "missing") is None
