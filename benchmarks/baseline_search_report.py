"""The baselines' configuration search (`results/baseline_search.json`): each baseline's candidate configurations
against its reference, on the validation splits only, and the configuration each baseline takes to the test.

The rule, fixed before the search ran: per task, a configuration scores the mean validation Dice over the selection
seeds at the better of its rates (the two its reference scored best on that task); over the tasks, the mean of those.
Each baseline takes its best configuration by that mean, the reference included, with no margin (ties go to the
reference): the benefit of the doubt goes to the baselines, the conservative side for a claim about IC-MoE.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks.accuracy_methods import BASELINE_CANDIDATES, ICMOE_CANDIDATES, ICMOE_VARIANTS
from benchmarks.harness import REPO_ROOT, validation_score

FAMILIES = tuple(dict.fromkeys(reference for reference, _ in BASELINE_CANDIDATES.values()))


def reference_selection(data: dict) -> list[dict]:
    """The selection runs of the files the search read its rates from (where its references' runs are)."""
    source = data["protocol"].get("lr_grid_from")
    if not source:
        raise ValueError("The search's results file records no --lr_grid_from: its references' runs are not known.")
    files = source.get("files") or [source["file"]]
    return [r for path in files for r in json.loads((REPO_ROOT / path).read_text())["selection"]]


def scores(data: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """method -> task -> (validation Dice at its better rate, that rate), for every candidate and its reference, each
    on the rates and seeds the search ran (the reference's runs read from its own results file)."""
    seeds = set(data["protocol"]["selection_seeds"])
    rates: dict[str, set] = {}  # task -> the rates the search tried (the same for a family's members)
    unknown = sorted({r["method"] for r in data["selection"]} - set(BASELINE_CANDIDATES))
    if unknown:
        raise ValueError(f"The search's results file holds runs of {unknown}, which are not baseline candidates.")
    for record in data["selection"]:
        rates.setdefault((record["dataset"], BASELINE_CANDIDATES[record["method"]][0]), set()).add(
            record["learning_rate"])
    return best_rate_per_task([r for r in data["selection"] if r["seed"] in seeds] + [
        r for r in reference_selection(data) if r["method"] in FAMILIES and r["seed"] in seeds
        and r["learning_rate"] in rates.get((r["dataset"], r["method"]), ())], seeds)


def best_rate_per_task(records: list[dict], seeds: set[int]) -> dict[str, dict[str, tuple[float, float]]]:
    """method -> task -> (mean validation Dice over `seeds` at the method's best rate on the task, that rate), from
    selection `records`; a rate not yet run at every seed does not count."""
    runs: dict[tuple[str, str, float], list[dict]] = {}
    for record in records:
        runs.setdefault((record["method"], record["dataset"], record["learning_rate"]), []).append(record)
    result: dict[str, dict[str, tuple[float, float]]] = {}
    for (method, task, lr), group in runs.items():
        if {r["seed"] for r in group} != seeds:
            continue  # not every seed has run yet
        score = validation_score(group)
        best = result.setdefault(method, {}).get(task)
        if best is None or score > best[0]:
            result[method][task] = (score, lr)
    return result


def icmoe_validation(data: dict) -> dict[str, tuple[float, float]]:
    """IC-MoE's (the default's) validation Dice per task at its best rate, on the search's selection seeds, from the
    files the search read its rates from: the same basis as the search's table."""
    seeds = set(data["protocol"]["selection_seeds"])
    icmoe = [r for r in reference_selection(data) if r["method"] == "icmoe" and r["seed"] in seeds]
    return best_rate_per_task(icmoe, seeds).get("icmoe", {})


def best_configurations(data: dict, table: dict | None = None) -> dict[str, str]:
    """Each baseline -> the configuration it takes to the test (the reference unless a candidate's mean over the
    tasks is higher), among those scored on every task the family was searched on; `table`: `scores(data)`, where the
    caller has it already."""
    table, chosen = table or scores(data), {}
    for family in FAMILIES:
        members = [family] + [name for name, (ref, _) in BASELINE_CANDIDATES.items() if ref == family]
        tasks = set(table.get(family, {}))
        complete = [m for m in members if m in table and set(table[m]) == tasks and tasks]
        if family in complete:
            chosen[family] = max(complete, key=lambda m: (np.mean([table[m][t][0] for t in tasks]), m == family))
    return chosen


def search_section(data: dict) -> list[str]:
    """The search's Markdown: per baseline, every configuration's validation Dice per task and over the tasks, the
    count of configurations tried, and the one taken to the test."""
    table = scores(data)
    chosen = best_configurations(data, table)
    tasks = list(data["protocol"].get("tasks", {}))
    lines = ["### Baselines' configuration search (validation only)", "",
             "Each baseline's configurations, one change each from the main benchmark's (LoRA at matched parameters: "
             "alpha = rank on `qkv`; the matched adapter: beside the MLP at scale 1; full fine-tuning: one rate for "
             "every layer), trained on the train split minus its validation split and scored on that split, at the "
             "two rates the reference scored best on each task and the selection seeds "
             f"{', '.join(map(str, data['protocol']['selection_seeds']))}. Cells: validation Dice at the better rate "
             "(the rate in brackets). A candidate that changes what is adapted is matched to IC-MoE's encoder "
             "parameters again. Bold: the configuration taken to the test (highest mean over the tasks; no margin, "
             "so the baselines get the benefit of the doubt).", ""]
    lines += ["| baseline | configuration | rank | " + " | ".join(tasks) + " | mean |",
              "|---|---|---|" + "---|" * len(tasks) + "---|"]
    variants = data["protocol"].get("matched_ranks", {}).get("variants", {})
    for family in FAMILIES:
        members = [family] + [name for name, (ref, _) in BASELINE_CANDIDATES.items() if ref == family]
        for method in members:
            if method not in table:
                continue
            options = BASELINE_CANDIDATES.get(method, (None, {}))[1]
            described = ", ".join(f"{k} {v}" for k, v in options.items()) or "reference"
            rank = "–" if family == "full" else variants.get(method, {}).get("rank") or data["protocol"][
                "matched_ranks"][f"{family.removesuffix('_matched')}_rank"]
            cells = [f"{table[method][t][0]:.4f} ({table[method][t][1]:g})" if t in table[method] else "–"
                     for t in tasks]
            mean = np.mean([table[method][t][0] for t in tasks if t in table[method]])
            name = f"**{method}**" if chosen.get(family) == method else method
            lines.append(f"| {family} | {name}: {described} | {rank} | " + " | ".join(cells) + f" | {mean:.4f} |")
    icmoe = icmoe_validation(data)
    if icmoe:
        cells = [f"{icmoe[t][0]:.4f} ({icmoe[t][1]:g})" if t in icmoe else "–" for t in tasks]
        lines.append("| IC-MoE | the default, for comparison (its best rate) | – | " + " | ".join(cells) +
                     f" | {np.mean([icmoe[t][0] for t in tasks if t in icmoe]):.4f} |")
    tried = {family: sum(m in table for m in [family] + [n for n, (r, _) in BASELINE_CANDIDATES.items() if r == family])
             for family in FAMILIES}
    icmoe_tried = len(set(ICMOE_VARIANTS) | set(ICMOE_CANDIDATES))
    lines += ["", "Configurations scored on validation, the reference included: " +
              "; ".join(f"{f} {n}" for f, n in tried.items()) +
              f"; IC-MoE's default, for comparison: {icmoe_tried} named configurations over its rounds "
              "(docs/HISTORY.md), each at two or more rates. The baselines' searches are smaller; their learning "
              "rates were searched on full grids in the main benchmark.", ""]
    return lines


# ------------------------------------------------------------------------------------- the README's results table
LABELS = {
    "zeroshot": "zero-shot stand-in SAM", "decoder": "mask decoder only", "lora": "LoRA rank 4 on `qkv`",
    "lora_matched": "LoRA at IC-MoE's parameters", "adapter": "adapter rank 64 beside the MLP",
    "adapter_matched": "adapter at IC-MoE's parameters", "full": "full fine-tuning", "icmoe": "**IC-MoE** (default)",
}
README_NAME = "readme_results"  # the README's block: <!-- readme_results:begin --> ... <!-- readme_results:end -->


OPTION_WORDS = {
    "lora_alpha_per_rank": lambda v: f"alpha {v:g} x rank", "lora_targets": lambda v: f"on {v}",
    "lora_dropout": lambda v: f"dropout {v:g}", "adapter_placement": lambda v: "beside qkv" if v == "attention" else
    "beside the MLP", "adapter_scale": lambda v: f"scale {v:g}", "layer_lr_decay": lambda v: f"layer-wise lr decay {v:g}",
}


def method_label(method: str) -> str:
    """A row's name: the method, and for a baseline's searched configuration, which one it is."""
    if method in BASELINE_CANDIDATES:
        reference, options = BASELINE_CANDIDATES[method]
        return f"{LABELS[reference]}, searched: {', '.join(OPTION_WORDS[k](v) for k, v in options.items())}"
    return LABELS.get(method, method)


def readme_results(data: dict, source: str) -> str:
    """The README's results table from the fresh-test results file `source`: per task, test Dice mean ± std over
    seeds, and IC-MoE minus each method with its 95 % interval over seeds and test objects."""
    from benchmarks.accuracy_methods import MAIN_METHODS
    from benchmarks.accuracy_report import markers, ordered, paired_difference, summary_over_seeds

    records = data["records"]
    tasks = ordered(records, "dataset", tuple(data["protocol"].get("tasks", {})))
    # A searched configuration sits where its reference would, so IC-MoE (the last main method) stays last.
    unknown = sorted({r["method"] for r in records} - set(MAIN_METHODS) - set(BASELINE_CANDIDATES))
    if unknown:
        raise ValueError(f"The README's table has the main methods and the baselines' searched configurations, not "
                         f"{unknown}.")
    methods = sorted(dict.fromkeys(r["method"] for r in records),
                     key=lambda m: MAIN_METHODS.index(BASELINE_CANDIDATES.get(m, (m, None))[0]))
    begin, end = markers(README_NAME)
    lines = [begin, f"Generated from `benchmarks/results/{source}` by `python benchmarks/accuracy.py --output "
             f"benchmarks/results/{source} --report`.", "",
             "| method | " + " | ".join(f"{task}: Dice | IC-MoE minus it [95 % interval]" for task in tasks) + " |",
             "|---|" + "---|---|" * len(tasks)]
    for method in methods:
        cells = []
        for task in tasks:
            ours = [r for r in records if r["dataset"] == task and r["method"] == "icmoe"]
            theirs = sorted((r for r in records if r["dataset"] == task and r["method"] == method),
                            key=lambda r: r["seed"])
            cells.append(summary_over_seeds([r["dice"] for r in theirs], 3))
            if method == "icmoe" or not ours:
                cells.append("")
                continue
            difference, low, high = paired_difference(ours, theirs)
            cells.append(f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]")
        lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [end]) + "\n"
