"""Renders the accuracy benchmark's results file as the accuracy section of docs/BENCHMARKS.md, with its figure."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from benchmarks.accuracy_methods import (
    ABLATION_REFERENCE,
    ABLATIONS,
    BASELINE_CANDIDATES,
    ICMOE_CANDIDATES,
    MAIN_METHODS,
)
from benchmarks.sections import write_section


def markers(name: str) -> tuple[str, str]:
    """The comments around the section of one results file (`accuracy` for the main file)."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


MARK_BEGIN, MARK_END = markers("accuracy")
# A baseline's best configuration takes its reference's place in the main table (the fresh test's results file).
TABLE_METHODS = MAIN_METHODS + tuple(BASELINE_CANDIDATES)
METHOD_ORDER = TABLE_METHODS + ABLATIONS + tuple(ICMOE_CANDIDATES)  # rows and columns of the tables
PAIRED_RESAMPLES = 10_000
# Settings every record of one results file shares; a resume with other values must start a new file.
SHARED_SETTINGS = ("base_model", "max_train_steps", "per_device_train_batch_size", "max_train_samples",
                   "max_eval_samples", "validation_fraction", "validation_seed", "selection_seeds")


def summary_over_seeds(values: list[float], digits: int) -> str:
    """Mean ± sample std over seeds; the mean alone for one seed or non-finite values (inf HD95 shows as inf)."""
    if len(values) == 1 or not all(math.isfinite(v) for v in values):
        return f"{np.mean(values):.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def ordered(records: list[dict], key: str, order: tuple[str, ...]) -> list[str]:
    seen = list(dict.fromkeys(r[key] for r in records))
    return sorted(seen, key=lambda v: (order.index(v) if v in order else len(order), seen.index(v)))


def _results_table(data: dict, methods: tuple[str, ...]) -> list[str]:
    records = [r for r in data["records"] if r["method"] in methods]
    if not records:
        return []
    rows = ["| task | method | n seeds | lr | Dice | IoU | HD95 (px) | trainable params (of which encoder) |",
            "|---|---|---|---|---|---|---|---|"]
    for task in ordered(records, "dataset", tuple(data["protocol"].get("tasks", {}))):
        of_task = [r for r in records if r["dataset"] == task]
        label = f"{task} (simulated)" if of_task[0].get("simulated") else task
        for method in ordered(of_task, "method", methods):
            group = sorted((r for r in of_task if r["method"] == method), key=lambda r: r["seed"])
            lr = group[0]["learning_rate"]
            rows.append(
                f"| {label} | {method} | {len(group)} | {'–' if lr is None else f'{lr:g}'} "
                f"| {summary_over_seeds([r['dice'] for r in group], 3)} | {summary_over_seeds([r['iou'] for r in group], 3)} "
                f"| {summary_over_seeds([r['hd95'] for r in group], 2)} "
                f"| {group[0]['trainable_params']:,} ({group[0]['trainable_encoder_params']:,}) |"
            )
    return rows


def selection_table(data: dict, order: tuple[str, ...] = METHOD_ORDER) -> list[str]:
    selection = data["selection"]
    if not selection:
        return []
    rows = ["| task | method | validation Dice per learning rate, mean over selection seeds (chosen in bold) |",
            "|---|---|---|"]
    for task in ordered(selection, "dataset", tuple(data["protocol"].get("tasks", {}))):
        of_task = [r for r in selection if r["dataset"] == task]
        for method in ordered(of_task, "method", order):
            of_method = [r for r in of_task if r["method"] == method]
            cells = []
            for lr in sorted({r["learning_rate"] for r in of_method}):
                group = [r for r in of_method if r["learning_rate"] == lr]
                cell = f"{lr:g}: {summary_over_seeds([r['val_dice'] for r in group], 3)}"
                cells.append(f"**{cell}**" if group[0].get("chosen") else cell)
            rows.append(f"| {task} | {method} | {', '.join(cells)} |")
    return rows


def rates_tried(data: dict, order: tuple[str, ...] = METHOD_ORDER) -> dict[str, dict[str, list[float]]]:
    """Per task and method, the learning rates its records used (the grid when selected, else the one rate): read
    from the records themselves, since processes that share a results file may have run different grids."""
    tried: dict[str, dict[str, set]] = {}
    for record in data["selection"] + data["records"]:
        if record["learning_rate"] is not None:
            tried.setdefault(record["dataset"], {}).setdefault(record["method"], set()).add(record["learning_rate"])
    rank = {method: index for index, method in enumerate(order)}
    return {task: {m: sorted(by_method[m]) for m in sorted(by_method, key=lambda m: rank.get(m, len(order)))}
            for task, by_method in tried.items()}


def best_mean_learning_rates(data: dict) -> dict[str, tuple[float, float, list[str]]]:
    """Per method: the learning rate with the best validation Dice averaged over the tasks (and selection seeds) that
    ran it, with that mean and the tasks. For the main methods, what `training/methods.py` takes as their defaults;
    for IC-MoE variants, how candidate defaults compare without the test split."""
    best = {}
    for method in ordered(data["selection"], "method", METHOD_ORDER):
        grid = [r for r in data["selection"] if r["method"] == method]
        tasks = sorted({r["dataset"] for r in grid})
        rates = {r["learning_rate"] for r in grid}
        # Only rates every task tried: a mean over fewer tasks would not compare.
        common = [lr for lr in rates if all(any(r["dataset"] == t and r["learning_rate"] == lr for r in grid) for t in tasks)]
        if not common:
            continue
        means = {lr: float(np.mean([r["val_dice"] for r in grid if r["learning_rate"] == lr])) for lr in common}
        lr = max(means, key=means.get)
        best[method] = (lr, means[lr], tasks)
    return best


def paired_difference(reference: list[dict], other: list[dict], *, resamples: int = PAIRED_RESAMPLES, seed: int = 0,
                      resample_objects: bool = True, key: str = "per_image_dice") -> tuple[float, float, float]:
    """Mean test Dice of `reference` minus `other` (records of one task), with a 95 % bootstrap interval.

    The training seeds are drawn with replacement within each method; with `resample_objects`, the test objects too,
    once per resample and the same for both methods (both scored the same objects), so that the interval also
    covers the test split being a sample (19 nuclei are a small one). Without it, the interval says only how sure
    the difference is on these test objects. `key`: the records' field of per-object Dice; an object without a
    score (None) in any record of either method is left out."""
    scores = []
    for records in (reference, other):
        if not records or any(r.get(key) is None for r in records):
            raise ValueError(f"Every record needs `{key}` (recorded by runs since the ninth round).")
        scores.append(np.asarray([r[key] for r in records], dtype=np.float64))  # (seeds, objects); None -> nan
    if scores[0].shape[1] != scores[1].shape[1]:
        raise ValueError(f"The methods scored different test splits ({scores[0].shape[1]} and "
                         f"{scores[1].shape[1]} objects): a paired comparison needs the same objects.")
    scored = ~np.isnan(np.concatenate(scores)).any(axis=0)  # (objects,)
    scores = [matrix[:, scored] for matrix in scores]
    rng = np.random.default_rng(seed)
    objects = rng.integers(0, scores[0].shape[1], size=(resamples, scores[0].shape[1]))  # (R, N)
    means = []
    for matrix in scores:
        if resample_objects:
            per_seed = np.stack([row[objects].mean(axis=1) for row in matrix])  # (seeds, R)
        else:
            per_seed = np.repeat(matrix.mean(axis=1, keepdims=True), resamples, axis=1)  # (seeds, R)
        seeds = rng.integers(0, len(matrix), size=(resamples, len(matrix)))  # (R, seeds)
        means.append(np.take_along_axis(per_seed.T, seeds, axis=1).mean(axis=1))  # (R,)
    low, high = np.percentile(means[0] - means[1], [2.5, 97.5])
    return float(scores[0].mean() - scores[1].mean()), float(low), float(high)


def paired_comparisons(methods: list[str]) -> list[tuple[str, str]]:
    """(reference, other) pairs among `methods`: IC-MoE against each other main method, and the ablations' reference
    against each ablation (one change from it; the current default, `icmoe`, is the reference without the votes)."""
    pairs = [("icmoe", m) for m in methods if m in TABLE_METHODS and m != "icmoe" and "icmoe" in methods]
    if ABLATION_REFERENCE in methods:
        pairs += [(ABLATION_REFERENCE, m) for m in methods if m in ABLATIONS + ("icmoe",) and m != ABLATION_REFERENCE]
    return pairs


def paired_table(data: dict, comparisons, order: tuple[str, ...], *, key: str = "per_image_dice",
                 objects: str = "test objects") -> list[str]:
    """Rows of the paired comparison: per task, each (reference, other) pair that `comparisons(task, methods)` names,
    from the records' per-object Dice in `key`."""
    records = [r for r in data["records"] if r.get(key) is not None]
    rows = []
    for task in ordered(records, "dataset", tuple(data["protocol"].get("tasks", {}))):
        of_task = [r for r in records if r["dataset"] == task]
        for reference, method in comparisons(task, ordered(of_task, "method", order)):
            ours = [r for r in of_task if r["method"] == reference]
            theirs = [r for r in of_task if r["method"] == method]
            scored = [all(r[key][i] is not None for r in ours + theirs) for i in range(len(ours[0][key]))]
            cells = [f"{len(ours)} / {len(theirs)}", str(sum(scored))]
            for resample_objects in (True, False):
                difference, low, high = paired_difference(ours, theirs, resample_objects=resample_objects, key=key)
                verdict = "ahead" if low > 0 else "behind" if high < 0 else "not separable"
                cells.append(f"[{low:+.4f}, {high:+.4f}] {verdict}")
            rows.append(f"| {task} | {reference} | {method} | {cells[0]} | {cells[1]} | {difference:+.4f} "
                        f"| {cells[2]} | {cells[3]} |")
    if not rows:
        return []
    header = (f"| task | reference | against | seeds | {objects} | reference minus other, mean Dice "
              "| 95 % interval, seeds and objects | 95 % interval, seeds only |")
    return [header, "|---|---|---|---|---|---|---|---|", *rows]


def plot_dice(data: dict, path: Path, order: tuple[str, ...] = MAIN_METHODS + ABLATIONS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = data["records"]
    tasks = ordered(records, "dataset", tuple(data["protocol"].get("tasks", {})))
    width = max(5.0, 0.7 * len({r["method"] for r in records}))
    fig, axes = plt.subplots(1, len(tasks), figsize=(width * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        of_task = [r for r in records if r["dataset"] == task]
        methods = ordered(of_task, "method", order)
        for x, method in enumerate(methods):
            dice = [r["dice"] for r in of_task if r["method"] == method]
            ax.bar(x, np.mean(dice), color="tab:orange" if method.startswith("icmoe") else "tab:blue", alpha=0.6)
            ax.scatter(np.full(len(dice), x) + np.linspace(-0.15, 0.15, len(dice)), dice, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("test Dice")
        ax.set_title(f"{task} (simulated)" if of_task[0].get("simulated") else task)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scored_on(protocol: dict) -> str:
    """What the seeded runs of a results file were scored on, as the table's caption says it."""
    if protocol.get("test_set") == "fresh":
        return ("Metrics on the fresh test sets (simulated tasks: 100 new samples each, drawn with a seed never used "
                "before and scored once, after every choice was frozen)")
    return ("Metrics on the development split (each task's original test split: it has steered earlier choices of "
            "IC-MoE's configuration, docs/HISTORY.md; the nuclei's is 19 nuclei from 4 tiles of one field of view)")


def rates_chosen(data: dict) -> str:
    """How the learning rates of a results file's seeded runs were chosen."""
    source = data["protocol"].get("lr_grid_from")
    if source and source.get("top") == 1:
        return f"lr chosen on the validation split (the best recorded in {', '.join(source['files'])})"
    if data["selection"]:
        return "lr chosen on the validation split"
    return "lr as the command gave it (a one-value `--lr_grid`: no validation runs in this file)"


def render_section(data: dict, figure: str | None, name: str = "accuracy") -> str:
    protocol = data["protocol"]
    begin, end = markers(name)
    lines = [begin, "## Accuracy" if name == "accuracy" else f"## Accuracy: `{name}.json`", "",
             f"Generated by `benchmarks/accuracy.py` from its results file; edit outside the {name} markers only.", ""]
    main = _results_table(data, TABLE_METHODS)
    if main:
        lines += [f"{scored_on(protocol)}, mean ± std over seeds (std when n > 1); {rates_chosen(data)}.", ""]
        lines += main + [""]
    ablations = _results_table(data, ("icmoe",) + ABLATIONS)
    if any(r["method"] in ABLATIONS for r in data["records"]):
        lines += ["### IC-MoE ablations", "", "Overrides of the default IC-MoE adapter config:", ""]
        lines += [f"- `{m}`: `{json.dumps(o)}`" for m, o in protocol.get("icmoe_variants", {}).items() if m != "icmoe"]
        lines += [""] + ablations + [""]
    if figure:
        lines += [f"![Test Dice per method and task; dots are seeds]({figure})", ""]
    paired = paired_table(data, lambda task, methods: paired_comparisons(methods), TABLE_METHODS + ABLATIONS)
    if paired:
        has_ablations = any(f"| {ABLATION_REFERENCE} |" in row for row in paired)
        ablated = f", and the ablations' reference (`{ABLATION_REFERENCE}`) minus each ablation's" if has_ablations else ""
        explained = (f"IC-MoE's mean test Dice minus each other method's{ablated}, "
                     f"with 95 % intervals from {PAIRED_RESAMPLES:,} bootstrap resamples of the training seeds "
                     "(within each method) and of the test objects (the same ones for both methods), or of the seeds "
                     "alone (how sure the difference is on these test objects); `ahead` or `behind` when the interval "
                     "excludes 0.")
        lines += ["### Paired comparison", "", explained, "", *paired, ""]
    if protocol.get("matched_ranks"):
        m = protocol["matched_ranks"]
        lines += ["### Parameter-matched baselines", "",
                  f"Trainable encoder parameters (under `vision_encoder`): IC-MoE (default config) "
                  f"{m['icmoe_encoder_params']:,}; `lora_matched` rank {m['lora_rank']} "
                  f"({m['lora_encoder_params']:,}); `adapter_matched` rank {m['adapter_rank']} "
                  f"({m['adapter_encoder_params']:,}); tolerance {m['tolerance']:.0%}." +
                  "".join(f" Searched `{name}`: rank {v['rank']} ({v['encoder_params']:,})."
                          for name, v in m.get("variants", {}).items()
                          if any(r["method"] == name for r in data["records"] + data["selection"])), ""]
    selection = selection_table(data)
    if selection:
        lines += ["### Learning-rate selection", ""] + selection + [""]
        lines += ["Best learning rate per method by validation Dice averaged over the tasks (the defaults of "
                  "`training/run.py` for the main methods come from here):", ""]
        lines += [f"- `{m}`: {lr:g} (mean validation Dice {mean:.3f} over {', '.join(tasks)})"
                  for m, (lr, mean, tasks) in best_mean_learning_rates(data).items()] + [""]
    if protocol.get("baseline_candidates") and data["selection"]:  # the search's own file
        from benchmarks.baseline_search_report import search_section

        lines += search_section(data)
    lines += protocol_lines(data, SHARED_SETTINGS + ("selection_metric",))
    return "\n".join(lines + [end]) + "\n"


def protocol_lines(data: dict, keys: tuple[str, ...], order: tuple[str, ...] = METHOD_ORDER) -> list[str]:
    """The `Protocol` and `Reproduce` subsections: the settings in `keys`, the rates tried, the tasks, the machines
    and the commands that made the results file."""
    protocol = data["protocol"]
    lines = ["### Protocol", ""]
    lines += [f"- {key}: `{json.dumps(protocol[key])}`" for key in keys if key in protocol]
    lines += [f"- learning rates tried, {task}: " + "; ".join(f"`{m}` {', '.join(f'{lr:g}' for lr in lrs)}"
                                                      for m, lrs in grids.items())
              for task, grids in rates_tried(data, order).items()]
    tasks = protocol.get("tasks", {})
    lines += [f"- task `{name}`: {t.get('modality', '')}, "
              f"{'no prompts' if t['prompt'] == 'none' else t['prompt'] + ' prompts'}"
              f"{', simulated' if t.get('simulated') else ''} (`{t['path']}`)" for name, t in tasks.items()]
    machines = sorted({r["machine"] for r in data["records"] + data["selection"] if "machine" in r})
    lines += [f"- machine: {name}" for name in machines]
    lines += ["", "### Reproduce", "", "```bash"] + protocol.get("commands", [])
    if protocol.get("commands"):
        lines += [f"{protocol['commands'][-1]} --report   # re-render this section from the results file"]
    return lines + ["```"]


def write_report(data: dict, report_path: Path, name: str = "accuracy") -> None:
    """Writes the section `name` (the results file's stem: `accuracy` for the main file, so that a side file
    such as a search never overwrites the main section) and its figure `figures/<name>.png`."""
    write_section_with_figure(data, report_path, name, render_section, TABLE_METHODS + ABLATIONS)
    repository = Path(__file__).resolve().parents[1]
    if data["protocol"].get("test_set") == "fresh" and report_path.resolve() == repository / "docs" / "BENCHMARKS.md":
        from benchmarks.baseline_search_report import README_NAME, readme_results

        write_section(repository / "README.md", readme_results(data, f"{name}.json"), *markers(README_NAME))


def write_section_with_figure(data: dict, report_path: Path, name: str, render, order: tuple[str, ...]) -> None:
    """`render(data, figure, name)` written between the markers of `name`, with the Dice figure of the records."""
    figure = None
    if data["records"]:
        figure_path = report_path.parent / "figures" / f"{name}.png"
        plot_dice(data, figure_path, order)
        figure = os.path.relpath(figure_path, report_path.parent)
    write_section(report_path, render(data, figure, name), *markers(name))
    print(f"[{name}] report in {report_path}", flush=True)
