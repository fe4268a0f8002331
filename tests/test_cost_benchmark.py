"""The cost benchmark end to end on a tiny SAM (`--smoke`), and its timing and report helpers."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("cost_benchmark", REPO_ROOT / "benchmarks" / "cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cost = _load()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cost")
    argv = ["--smoke", "--num_threads", "1", "--reps", "2", "--scaling_experts", "3", "6",
            "--work_dir", str(folder / "work"), "--output", str(folder / "cost_smoke.json"),
            "--report_path", str(folder / "BENCHMARKS.md")]
    report = cost.main(argv)
    return report, folder


@pytest.mark.slow
def test_smoke_report_is_saved_and_rendered(smoke):
    report, folder = smoke
    assert json.loads((folder / "cost_smoke.json").read_text()) == json.loads(json.dumps(report))
    text = (folder / "BENCHMARKS.md").read_text()
    assert text.count(cost.MARK_BEGIN) == 1 and text.count(cost.MARK_END) == 1
    for row in ("| icmoe_fused |", "| lora_matched |", "| adapter_matched |", "| 6 routed |"):
        assert row in text
    assert "Profiler, forward at 64 px" in text


def _assert_ratios_are_pair_by_pair(methods: dict, reference: str) -> None:
    """Every method's ratio to `reference` is the median and range of its times divided, repetition by repetition,
    by the reference's times of the same repetition (recomputed here from the recorded times)."""
    for name, entry in methods.items():
        ratios = [value / ref for value, ref in zip(entry["times_s"], methods[reference]["times_s"], strict=True)]
        assert entry[f"ratio_to_{reference}"] == pytest.approx(
            {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}), name


@pytest.mark.slow
def test_forward_section(smoke):
    report, _ = smoke
    methods = report["forward"]["methods"]
    assert list(methods) == list(cost.FORWARD_METHODS)
    for name, entry in methods.items():
        assert len(entry["times_s"]) == 2 and entry["min_s"] <= entry["median_s"] <= entry["max_s"]
        assert entry["images_per_s"] == pytest.approx(1 / entry["median_s"])
        ratio = entry["ratio_to_sam"]
        assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
        assert entry["held_bytes"] > 0
    _assert_ratios_are_pair_by_pair(methods, "sam")
    # IC-MoE holds SAM's weights plus its adapters; the fused path also holds its concatenated weights.
    assert methods["icmoe"]["held_bytes"] > methods["sam"]["held_bytes"]
    assert methods["icmoe_fused"]["held_bytes"] > methods["icmoe"]["held_bytes"]


@pytest.mark.slow
def test_matched_ranks_are_within_the_tolerance(smoke):
    matched = smoke[0]["matched_ranks"]
    target = matched["icmoe_encoder_params"]
    for kind in ("lora", "adapter"):
        assert abs(matched[f"{kind}_encoder_params"] - target) <= cost.MATCH_TOLERANCE * target
    files = smoke[0]["files"]["methods"]
    assert files["lora_matched"]["trainable_encoder_params"] == matched["lora_encoder_params"]
    assert files["icmoe"]["trainable_encoder_params"] == target


@pytest.mark.slow
def test_train_section_counts_and_memory(smoke):
    section = smoke[0]["train"]
    methods = section["methods"]
    assert section["reference"] == "lora_matched" and list(methods) == list(cost.TRAIN_METHODS)
    _assert_ratios_are_pair_by_pair(methods, "lora_matched")
    _assert_ratios_are_pair_by_pair(methods, "lora_r4")
    assert methods["decoder"]["trainable_params"] < methods["lora_r4"]["trainable_params"] < \
        methods["lora_matched"]["trainable_params"]
    for entry in methods.values():
        assert entry["images_per_s"] == pytest.approx(2 / entry["median_s"])
        # held tensors include the AdamW moments of every trainable parameter
        assert entry["static_bytes"] >= 4 * 3 * entry["trainable_params"]
        if entry["step_peak_bytes"] is not None:  # Linux: peak resident set
            assert entry["step_peak_bytes"] > 0
            assert entry["peak_bytes"] == entry["static_bytes"] + entry["step_peak_bytes"]


@pytest.mark.slow
def test_scaling_rows(smoke):
    rows = smoke[0]["scaling"]["rows"]
    for size in (32, 64):
        by_experts = {row["experts"]: row for row in rows if row["image_size"] == size}
        assert set(by_experts) == {"default", "3 routed", "6 routed", "SAM / LoRA matched"}
        assert by_experts["3 routed"]["routed_experts"] == 3 and by_experts["6 routed"]["routed_experts"] == 6
        assert by_experts["3 routed"]["trainable_encoder_params"] < by_experts["6 routed"]["trainable_encoder_params"]
        for label in ("default", "3 routed", "6 routed"):
            assert by_experts[label]["forward_ratio_to_sam"]["median"] > 0
            assert by_experts[label]["train_ratio_to_lora_matched"]["median"] > 0
    # the trainable parameters do not depend on the image size
    counts = {(row["experts"], row["image_size"]): row.get("trainable_encoder_params") for row in rows}
    assert counts[("6 routed", 32)] == counts[("6 routed", 64)]


@pytest.mark.slow
def test_profile_finds_every_layer_call(smoke):
    report, _ = smoke
    layers_per_pass = 2  # the tiny SAM's two blocks each hold one IC-MoE layer
    for what in ("forward", "train_step"):
        entry = report["profile"][what]
        assert entry["layer_calls"] == layers_per_pass
        assert 0 < entry["layer_cpu_share"] < 1
        assert entry["ops_per_layer_call"] >= 5 and entry["top_ops"]
        assert all(op["calls"] >= 1 for op in entry["top_ops"])


@pytest.mark.slow
def test_adapter_files_match_their_tensors(smoke):
    files = smoke[0]["files"]["methods"]
    for method in ("icmoe", "adapter", "adapter_matched", "lora_r4", "lora_matched"):
        size, params = files[method]["adapter_file_bytes"], files[method]["trainable_params"]
        # float32 tensors plus a safetensors header (LoRA's file also holds the trained decoder; IC-MoE's holds
        # everything it trains except the training-only projection head, so at most its trainable count)
        assert size <= 4 * params + 64 * 1024 and size >= 4 * files[method]["trainable_encoder_params"]
    assert files["sam_full_checkpoint"]["bytes"] >= 4 * files["sam_full_checkpoint"]["params"]
    assert "adapter_file_bytes" not in files["decoder"]


def test_the_published_ratios_are_those_of_their_recorded_times():
    """The committed CPU results' ratios follow from the times they record (a ratio edited by hand, or taken as a
    ratio of medians, fails)."""
    report = json.loads((REPO_ROOT / "benchmarks" / "results" / "cost_cpu_fp32.json").read_text())
    _assert_ratios_are_pair_by_pair(report["forward"]["methods"], "sam")
    train = report["train"]["methods"]
    _assert_ratios_are_pair_by_pair(train, report["train"]["reference"])


def test_summarize_takes_ratios_pair_by_pair():
    summary = cost.summarize({"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 6.0]}, "a", batch_size=2)
    assert summary["b"]["ratio_to_a"] == {"median": 2.0, "min": 1.0, "max": 2.0}
    assert summary["b"]["median_s"] == 2.0 and summary["b"]["images_per_s"] == 1.0
    assert math.isclose(summary["a"]["ratio_to_a"]["median"], 1.0)


def test_fused_switch_is_restored_after_an_error():
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fused_inference = False

    model = nn.Sequential(Block(), Block())
    with pytest.raises(RuntimeError), cost.fused(model):
        assert all(block.fused_inference for block in model)
        raise RuntimeError("inside")
    assert not any(block.fused_inference for block in model)


@pytest.mark.parametrize("argv, message", [
    (["--scaling_experts", "4"], "multiples of 3"),
    (["--train_methods", "icmoe", "adapter"], "needs lora_r4 or lora_matched"),
    (["--reps", "0"], "--reps"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        cost.parse_args(argv)
    assert message in capsys.readouterr().err
