"""The published accuracy record is its results files.

Every accuracy number that README.md, docs/USAGE.md, docs/BENCHMARKS.md, docs/METHOD.md and docs/HISTORY.md quote
from `benchmarks/results/*.json` is recomputed here from its file and rounded as the prose rounds it; the sentence or
table row around it is the anchor, and the whole text must stand in the document (line breaks aside). A stale number
fails with the text expected. The generated sections of docs/BENCHMARKS.md must be what `benchmarks/accuracy.py`
renders from the files now.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import numpy as np
import pytest
from published import between, document, flat, mean_std, results, seed_dice

ACC, FIVE, TEN = "accuracy.json", "accuracy_five_seeds.json", "accuracy_ten_seeds.json"
PAIRED, OWN_RATE = "accuracy_ablations_paired.json", "accuracy_ablations_own_rate.json"
BRIDGE = "accuracy_bridge_candidate.json"
FRESH, SEARCH = "accuracy_fresh_test.json", "baseline_search.json"
MR, US, NUC = "mr_brain_lesion", "us_lesion", "dsb2018_nuclei"
TASKS = (MR, US, NUC)
README, USAGE, BENCHMARKS = "README.md", "docs/USAGE.md", "docs/BENCHMARKS.md"
METHOD, HISTORY = "docs/METHOD.md", "docs/HISTORY.md"
DOCUMENTS = (README, USAGE, BENCHMARKS, METHOD, HISTORY)
REFERENCE = "icmoe_round4"  # the ablations' reference: the current default with the pixel votes on (the fourth round's)
NUCLEI_SET = "19 nuclei from 4 tiles of one field of view"  # what the nuclei test set is, said beside its numbers


# ----------------------------------------------------------------------------------------- numbers from the files
def fresh_gap(task: str, other: str) -> str:
    """IC-MoE minus `other` on the fresh test set, with its paired interval: `-0.014 [-0.026, -0.003]`."""
    return f"{gap(task, 'icmoe', other, FRESH, '+.3f')} {interval(FRESH, task, 'icmoe', other)}"


def search_count() -> int:
    """Configurations the baselines' search scored on every task, the references included."""
    from benchmarks.baseline_search_report import scores

    return len(scores(results(SEARCH)))


def icmoe_count() -> int:
    from benchmarks.accuracy_methods import ICMOE_CANDIDATES, ICMOE_VARIANTS

    return len(set(ICMOE_VARIANTS) | set(ICMOE_CANDIDATES))


def search_mean(method: str) -> str:
    """Validation Dice over the three tasks in the baselines' search (IC-MoE's on the same basis)."""
    from benchmarks.baseline_search_report import icmoe_validation, scores

    data = results(SEARCH)
    table = icmoe_validation(data) if method == "icmoe" else scores(data)[method]
    return f"{np.mean([score for score, _ in table.values()]):.3f}"


def dice(task: str, method: str, file: str = ACC) -> str:
    """`mean ± std` test Dice over seeds, three decimals."""
    return mean_std(seed_dice(file, task, method))


def mean(task: str, method: str, file: str = ACC, digits: int = 3) -> str:
    return f"{np.mean(seed_dice(file, task, method)):.{digits}f}"


def gap(task: str, method: str, other: str, file: str = ACC, fmt: str = ".3f") -> str:
    """Mean test Dice of `method` minus `other`'s."""
    return f"{np.mean(seed_dice(file, task, method)) - np.mean(seed_dice(file, task, other)):{fmt}}"


def spread(task: str, method: str, file: str = ACC, digits: int = 3) -> str:
    return f"{np.std(seed_dice(file, task, method), ddof=1):.{digits}f}"


def interval(file: str, task: str, reference: str, other: str, *, resample_objects: bool = True) -> str:
    """`[low, high]` of the paired bootstrap, three decimals, as the prose quotes the generated table."""
    from benchmarks.accuracy_report import paired_difference

    records = results(file)["records"]
    ours, theirs = ([r for r in records if r["dataset"] == task and r["method"] == m] for m in (reference, other))
    _, low, high = paired_difference(ours, theirs, resample_objects=resample_objects)
    return f"[{low:+.3f}, {high:+.3f}]"


def encoder_share(method: str) -> str:
    """A matched baseline's trainable encoder parameters against IC-MoE's, as a signed percentage."""
    ranks = results(ACC)["protocol"]["matched_ranks"]
    return f"{ranks[f'{method}_encoder_params'] / ranks['icmoe_encoder_params'] - 1:+.1%}".replace("%", " %")


def validation_mean(method: str, learning_rate: float) -> str:
    """IC-MoE's mean validation Dice over tasks and selection seeds at one learning rate (`accuracy.json`)."""
    dice = [r["val_dice"] for r in results(ACC)["selection"]
            if r["method"] == method and r["learning_rate"] == learning_rate]
    return f"{np.mean(dice):.3f}"


VOTES_FILES = ("icmoe_search_round7.json", "icmoe_search_round8.json", ACC)  # the decision on the pixel votes
CONTRASTIVE_FILES = ("icmoe_search_round3.json", "icmoe_search_round4.json", "icmoe_search_round5.json")  # on contrast
VOTES_ON = {"pixel_vote_weight": 1.0, "vote_loss_coef": 0.1}
CONTRASTIVE_ON = {**VOTES_ON, "contrastive_loss_coef": 0.01}  # `icmoe_round3`, the third round's default
VOTES_RATES = {NUC: 1e-4, MR: 3e-4, US: 3e-3}  # the default's chosen rate per task
CONTRASTIVE_RATES = {MR: 1e-3, US: 1e-3}  # the rate that decided the contrastive loss


def validation_by_seed(files: tuple[str, ...], task: str, learning_rate: float, **overrides) -> dict[int, float]:
    """Validation Dice per selection seed of the IC-MoE configuration `overrides` makes of the current default (matched
    on its recorded `icmoe_config`, whatever the method was called in that round), from the search files."""
    from modeling_icmoe import IcMoeAdapterConfig

    wanted = {**IcMoeAdapterConfig().to_dict(), **overrides}
    by_seed = {}
    for name in files:
        for record in results(name)["selection"]:
            config = record["settings"].get("icmoe_config")
            if (config and record["dataset"] == task and record["learning_rate"] == learning_rate
                    and all(value == wanted[key] for key, value in config.items() if key in wanted)):
                by_seed.setdefault(record["seed"], record["val_dice"])
    assert sorted(by_seed) == [0, 1, 2, 3], (task, learning_rate, overrides, sorted(by_seed))
    return by_seed


def validation_row(files: tuple[str, ...], rates: dict[str, float], bold: bool = False, **overrides) -> str:
    """Mean validation Dice over four seeds per task, then over the tasks: the cells of a decision table."""
    means = [np.mean(list(validation_by_seed(files, task, rate, **overrides).values())) for task, rate in rates.items()]
    cells = [f"{value:.3f}" for value in [*means, np.mean(means)]]
    return " | ".join(f"**{cell}**" if bold else cell for cell in cells)


def over_tasks(files: tuple[str, ...], rates: dict[str, float], **overrides) -> str:
    """The last cell of `validation_row`: the mean over the tasks."""
    return validation_row(files, rates, **overrides).split(" | ")[-1]


def votes_per_seed(task: str) -> str:
    off, on = (validation_by_seed(VOTES_FILES, task, VOTES_RATES[task], **config) for config in ({}, VOTES_ON))
    return ", ".join(f"{off[seed] - on[seed]:+.3f}" for seed in sorted(off))


def default_run() -> dict:
    return results("default_run.json")


def default_run_seed(seed: int) -> dict:
    return next(run for run in default_run()["runs"] if run["seed"] == seed)


def default_run_dice(separator: str) -> str:
    """Each seed's Dice, then its seed, as the prose lists them: `0.7702 / 0.7731 for seeds 42 / 0`."""
    runs = default_run()["runs"]
    return (separator.join(f"{run['dice']:.4f}" for run in runs) + " for seeds "
            + separator.join(str(run["seed"]) for run in runs))


def metrics_row(name: str, m: dict, n: int) -> str:
    """A row of the table `training/run.py` prints at the end of a run."""
    return (f"{name:<16} {m['dice']:.4f}±{m['dice_std']:.3f} {m['iou']:.4f}±{m['iou_std']:.3f} "
            f"{m['hd95']:8.2f}±{m['hd95_std']:6.2f}  {n}")


def table_row(label: str, cell: Callable[[str], str], bold: Callable[[str], bool] = lambda task: False) -> str:
    cells = [f"**{cell(t)}**" if bold(t) else cell(t) for t in TASKS]
    return f"| {label} | {' | '.join(cells)} |"


def current_cell(method: str) -> Callable[[str], str]:
    """The current-results tables: zero-shot by its mean alone (it does not train), trained methods by mean ± std."""
    return (lambda task: mean(task, method)) if method == "zeroshot" else (lambda task: dice(task, method))


def lower_than_reference(task: str, method: str, file: str = ACC) -> bool:
    """The ablations' bold rule: lower than the reference by more than the larger of the two seed stds."""
    ours, theirs = seed_dice(file, task, method), seed_dice(ACC, task, REFERENCE)
    return np.mean(theirs) - np.mean(ours) > max(np.std(ours, ddof=1), np.std(theirs, ddof=1))


def chosen_rate(file: str, task: str, method: str) -> float:
    rates = {r["learning_rate"] for r in results(file)["records"] if r["dataset"] == task and r["method"] == method}
    assert len(rates) == 1, (file, task, method, rates)
    return rates.pop()


def own_rate_row(label: str, method: str) -> str:
    """A row of METHOD.md's ablations at their own learning rates: Dice (bold when lower than the reference by more
    than the larger std) and the rate the removal chose, per task."""
    cells = []
    for task in TASKS:
        text = dice(task, method, OWN_RATE)
        text = f"**{text}**" if lower_than_reference(task, method, OWN_RATE) else text
        cells.append(f"{text} ({chosen_rate(OWN_RATE, task, method):.0e})".replace("e-0", "e-"))
    return f"| {label} | {' | '.join(cells)} |"


# ----------------------------------------------------------------------------------------------------- the claims
class Claim(NamedTuple):
    label: str
    document: str
    text: Callable[[], str]  # the expected text, with the numbers computed from the results files


MAIN_ROWS = (("zero-shot stand-in SAM", "zeroshot"), ("decoder-only", "decoder"), ("LoRA r4 (`qkv`)", "lora"),
             ("LoRA at IC-MoE's parameters (r51)", "lora_matched"), ("adapter (r64, beside the MLP)", "adapter"),
             ("adapter at IC-MoE's parameters (r101)", "adapter_matched"), ("**IC-MoE** (the default)", "icmoe"),
             ("full fine-tuning", "full"))
PARAMETER_EFFICIENT = ("decoder", "lora", "lora_matched", "adapter", "adapter_matched", "icmoe")
ABLATION_ROWS = (("basic experts (routed and shared)", "icmoe_no_basic"), ("shared expert", "icmoe_no_shared"),
                 ("semantic experts", "icmoe_no_semantic"), ("adaptive experts", "icmoe_no_adaptive"),
                 ("pixel-probability votes and vote loss (now the default, `icmoe`)", "icmoe"),
                 ("pixel loss", "icmoe_no_pixel_loss"), ("load balancing", "icmoe_no_balance"),
                 ("top-2 routing (top-1 instead)", "icmoe_top1"), ("top-2 routing (dense instead)", "icmoe_dense"))
PAIRED_ROWS = (("basic experts (routed and shared)", "icmoe_no_basic"), ("shared expert", "icmoe_no_shared"),
               ("semantic experts", "icmoe_no_semantic"), ("adaptive experts", "icmoe_no_adaptive"),
               ("pixel-probability votes (the current default, `icmoe`)", "icmoe"),
               ("pixel loss", "icmoe_no_pixel_loss"),
               ("load balancing", "icmoe_no_balance"), ("top-2 routing (top-1 instead)", "icmoe_top1"),
               ("top-2 routing (dense instead)", "icmoe_dense"),
               ("nothing removed, contrastive loss added (`icmoe_round3`)", "icmoe_round3"))


def _best_parameter_efficient(task: str) -> Callable[[str], bool]:
    means = {m: np.mean(seed_dice(ACC, task, m)) for m in PARAMETER_EFFICIENT}
    return lambda method: method == max(means, key=means.get)


CLAIMS = [
    # docs/BENCHMARKS.md, the current table and its narrative
    *[Claim(f"benchmarks table: {method}", BENCHMARKS, lambda label=label, method=method: table_row(
        label, current_cell(method), lambda task: method != "full" and _best_parameter_efficient(task)(method)))
      for label, method in MAIN_ROWS],
    Claim("benchmarks: the default with the pixel votes", BENCHMARKS, lambda: (
        f"The same configuration with the pixel votes on (`icmoe_round4`) had {dice(MR, REFERENCE)} on MR and "
        f"{dice(US, REFERENCE)} on US.")),
    Claim("benchmarks: matched parameters", BENCHMARKS, lambda: (
        f"they are {encoder_share('lora')} and {encoder_share('adapter')} from the current default's "
        f"{results(ACC)['protocol']['matched_ranks']['icmoe_encoder_params']:,}")),
    Claim("benchmarks: target, ultrasound", BENCHMARKS, lambda: (
        f"({gap(US, 'full', 'icmoe')} from full fine-tuning, {gap(US, 'icmoe', 'lora_matched')} above LoRA at matched "
        f"parameters; spread {spread(US, 'icmoe')} against the plain adapter's {spread(US, 'adapter')} and the matched "
        f"adapter's {spread(US, 'adapter_matched')})")),
    Claim("benchmarks: target, MR", BENCHMARKS, lambda: (
        f"({gap(MR, 'lora_matched', 'icmoe')} behind LoRA at matched parameters, less than either spread; "
        f"{gap(MR, 'full', 'icmoe')} from full fine-tuning; spread {spread(MR, 'icmoe')} against "
        f"{spread(MR, 'adapter')} and {spread(MR, 'adapter_matched')})")),
    Claim("benchmarks: target, nuclei", BENCHMARKS, lambda: (
        f"({gap(NUC, 'lora_matched', 'icmoe', fmt='.4f')} behind LoRA at matched parameters, "
        f"{gap(NUC, 'full', 'icmoe')} behind full fine-tuning; spread {spread(NUC, 'icmoe')})")),
    Claim("benchmarks: five seeds", BENCHMARKS, lambda: (
        f"MR IC-MoE {dice(MR, 'icmoe', FIVE)} against LoRA at matched parameters {dice(MR, 'lora_matched', FIVE)}; "
        f"US {dice(US, 'icmoe', FIVE)} against {dice(US, 'lora_matched', FIVE)} (adapter {dice(US, 'adapter', FIVE)}); "
        f"nuclei {dice(NUC, 'icmoe', FIVE)} against {dice(NUC, 'lora_matched', FIVE)}")),
    Claim("benchmarks: ten seeds", BENCHMARKS, lambda: ", ".join(
        f"{name} {dice(task, 'icmoe', TEN)} against {dice(task, 'lora_matched', TEN)} "
        f"(adapter {dice(task, 'adapter', TEN)})" for name, task in (("US", US), ("MR", MR), ("nuclei", NUC)))),
    Claim("benchmarks: ten seeds, intervals", BENCHMARKS, lambda: (
        f"IC-MoE minus LoRA at matched parameters is {gap(US, 'icmoe', 'lora_matched', TEN, '+.3f')} "
        f"{interval(TEN, US, 'icmoe', 'lora_matched')}, {gap(MR, 'icmoe', 'lora_matched', TEN, '+.3f')} "
        f"{interval(TEN, MR, 'icmoe', 'lora_matched')} and {gap(NUC, 'icmoe', 'lora_matched', TEN, '+.3f')} "
        f"{interval(TEN, NUC, 'icmoe', 'lora_matched')} (on these 19 nuclei alone "
        f"{interval(TEN, NUC, 'icmoe', 'lora_matched', resample_objects=False)}; they come from one field of view), "
        f"and minus the adapter "
        f"{gap(US, 'icmoe', 'adapter', TEN, '+.3f')} {interval(TEN, US, 'icmoe', 'adapter')}, "
        f"{gap(MR, 'icmoe', 'adapter', TEN, '+.3f')} {interval(TEN, MR, 'icmoe', 'adapter')} and "
        f"{gap(NUC, 'icmoe', 'adapter', TEN, '+.3f')} {interval(TEN, NUC, 'icmoe', 'adapter')}")),
    Claim("benchmarks: ablations against the spread", BENCHMARKS, lambda: (
        f"the basic experts (routed and shared) on all three tasks (MR {gap(MR, 'icmoe_no_basic', REFERENCE)}, US "
        f"{gap(US, 'icmoe_no_basic', REFERENCE)}, nuclei {gap(NUC, 'icmoe_no_basic', REFERENCE)}; lower in 9 of 9 seed "
        f"pairs), the shared expert on US and the nuclei ({gap(US, 'icmoe_no_shared', REFERENCE)}, "
        f"{gap(NUC, 'icmoe_no_shared', REFERENCE)}), the semantic experts on US and the nuclei "
        f"({gap(US, 'icmoe_no_semantic', REFERENCE)}, {gap(NUC, 'icmoe_no_semantic', REFERENCE)}), the adaptive "
        f"experts on MR and the nuclei ({gap(MR, 'icmoe_no_adaptive', REFERENCE)}, "
        f"{gap(NUC, 'icmoe_no_adaptive', REFERENCE)}), top-1 instead of top-2 routing on US "
        f"({gap(US, 'icmoe_top1', REFERENCE)}); the pixel-probability votes on US only ({gap(US, 'icmoe', REFERENCE)}; "
        f"MR {gap(MR, 'icmoe', REFERENCE)} within the spread, nuclei {gap(NUC, 'icmoe', REFERENCE, fmt='+.4f')}) and "
        f"the pixel loss on MR only ({gap(MR, 'icmoe_no_pixel_loss', REFERENCE)})")),
    Claim("benchmarks: contrastive loss added back", BENCHMARKS, lambda: (
        f"`icmoe_round3`, lowers MR by {gap(MR, REFERENCE, 'icmoe_round3')}, "
        f"US by {gap(US, REFERENCE, 'icmoe_round3')}")),
    Claim("benchmarks: paired ablations", BENCHMARKS, lambda: (
        f"only the basic experts lower two tasks (US {gap(US, REFERENCE, 'icmoe_no_basic', PAIRED, '+.3f')}, nuclei "
        f"{gap(NUC, REFERENCE, 'icmoe_no_basic', PAIRED, '+.3f')})")),
    Claim("benchmarks: adaptive experts at their own rate", BENCHMARKS, lambda: (
        f"the removal on MR moving to 1e-3 and scattering, {dice(MR, 'icmoe_no_adaptive', OWN_RATE)}")),
    Claim("benchmarks: top-1 at its own rate", BENCHMARKS, lambda: (
        f"top-1 still lowers US ({dice(US, 'icmoe_top1', OWN_RATE)} at 1e-3)")),
    Claim("benchmarks: default learning rate", BENCHMARKS, lambda: (
        f"3e-4 with the current default ({validation_mean('icmoe', 3e-4)}; 1e-3 gives "
        f"{validation_mean('icmoe', 1e-3)})")),
    *[Claim(f"{name}: gated linear mixture", document, lambda: (
        f"reaches {dice(NUC, 'bridge_split_linear_dense_rs5', BRIDGE)} on the nuclei (level with LoRA at matched "
        f"parameters), {dice(MR, 'bridge_split_linear_dense_rs5', BRIDGE)} on MR and "
        f"{dice(US, 'bridge_split_linear_dense_rs5', BRIDGE)} on US"))
      for name, document in (("benchmarks", BENCHMARKS), ("history", HISTORY))],
    Claim("benchmarks: the nuclei test set", BENCHMARKS, lambda: (
        f"The nuclei test set is {NUCLEI_SET}, so its per-object bootstrap (below) treats correlated objects as "
        f"independent.")),
    # README.md: the fresh test sets (its table is generated: tests/test_baseline_search.py) and the search
    Claim("readme: full fine-tuning ahead", README, lambda: (
        f"(layer-wise decay 0.6) on MR ({fresh_gap(MR, 'full_lld0.6')}) but not separably on ultrasound "
        f"({fresh_gap(US, 'full_lld0.6')}); plain, on ultrasound ({fresh_gap(US, 'full')}) but not separably on MR")),
    Claim("readme: the searched baselines on validation", README, lambda: (
        f"adapter and LoRA score at or slightly above IC-MoE ({search_mean('adapter_matched_attention_scale8')} and "
        f"{search_mean('lora_matched_alpha2')} against {search_mean('icmoe')} mean Dice over three tasks;")),
    Claim("readme: the nuclei test set", README, lambda: f"Their test split ({NUCLEI_SET})"),
    Claim("benchmarks: configurations searched", BENCHMARKS, lambda: (
        f"{search_count()} configurations in all, the references included, in stages fixed by rule, against "
        f"IC-MoE's {icmoe_count()} named ones)")),
    Claim("method: the adapter beside qkv", METHOD, lambda: (
        f"(IC-MoE minus it: MR {fresh_gap(MR, 'adapter_matched_attention_scale8')}, ultrasound "
        f"{fresh_gap(US, 'adapter_matched_attention_scale8')}) and at or slightly above it on validation, not a "
        f"resolved difference ({search_mean('adapter_matched_attention_scale8')} against {search_mean('icmoe')} mean "
        "Dice over three tasks)")),
    # docs/USAGE.md: the default job
    Claim("usage: why a simulated default", USAGE, lambda: (
        f"(test Dice {mean(NUC, 'zeroshot')} zero-shot, {mean(NUC, 'adapter_matched')}-{mean(NUC, 'lora_matched')} "
        f"after LoRA, the adapters or IC-MoE, {mean(NUC, 'decoder')} after the decoder alone; full fine-tuning reaches "
        f"{mean(NUC, 'full')}; that test set is {NUCLEI_SET})")),
    Claim("usage: MR against LoRA", USAGE, lambda: (
        f"({mean(MR, 'icmoe')} against {mean(MR, 'lora_matched')} over three seeds, {mean(MR, 'icmoe', FIVE, 4)} "
        f"against {mean(MR, 'lora_matched', FIVE, 4)} over five; less than either spread) and behind full fine-tuning "
        f"({mean(MR, 'full')})")),
    Claim("readme: the named ideas off by default", README, lambda: (
        f"(without the pixel votes {over_tasks(VOTES_FILES, VOTES_RATES)} against "
        f"{over_tasks(VOTES_FILES, VOTES_RATES, **VOTES_ON)} mean Dice over three tasks; without the contrastive loss "
        f"{over_tasks(CONTRASTIVE_FILES, CONTRASTIVE_RATES, **VOTES_ON)} against "
        f"{over_tasks(CONTRASTIVE_FILES, CONTRASTIVE_RATES, **CONTRASTIVE_ON)} over two)")),
    # README.md and docs/USAGE.md: the default run (benchmarks/results/default_run.json)
    Claim("readme: default run, IC-MoE row", README, lambda: metrics_row(
        "icmoe", default_run_seed(42), default_run_seed(42)["n_images"])),
    Claim("readme: default run, zero-shot row", README, lambda: metrics_row(
        "zero-shot base", default_run_seed(42)["zero_shot"], default_run_seed(42)["n_images"])),
    Claim("usage: default run over seeds", USAGE, lambda: (
        f"IC-MoE reached {default_run_dice(', ')}: {mean_std([run['dice'] for run in default_run()['runs']])}")),
    Claim("usage: default run, versions and spread", USAGE, lambda: (
        f"(torch {default_run()['versions']['torch']}, transformers {default_run()['versions']['transformers']}, "
        f"accelerate {default_run()['versions']['accelerate']}, peft {default_run()['versions']['peft']}) in "
        f"`benchmarks/results/default_run.json`")),
    Claim("usage: default run, spread over seeds", USAGE, lambda: (
        f"the seeds alone move Dice by {np.ptp([run['dice'] for run in default_run()['runs']]):.4f} here")),
    Claim("usage: default run, expert shares", USAGE, lambda: (
        f"smallest share {100 * min(r['min_expert_share'] for r in default_run()['runs']):.1f}-"
        f"{100 * max(r['min_expert_share'] for r in default_run()['runs']):.1f} % over the three seeds")),
    # docs/METHOD.md: the current defaults and the measurements behind them
    Claim("method: the defaults in one table", METHOD, lambda: (
        f"| without it {over_tasks(CONTRASTIVE_FILES, CONTRASTIVE_RATES, **VOTES_ON)} against "
        f"{over_tasks(CONTRASTIVE_FILES, CONTRASTIVE_RATES, **CONTRASTIVE_ON)} over four seeds ([contrastive loss]"
        f"(#no-contrastive-loss)) |\n| `pixel_vote_weight`, `vote_loss_coef` | 0, 0 | without the votes "
        f"{over_tasks(VOTES_FILES, VOTES_RATES)} against {over_tasks(VOTES_FILES, VOTES_RATES, **VOTES_ON)} over four "
        f"seeds ([votes](#no-pixel-probability-votes)) |\n| learning rate (`training/run.py`) | 3e-4 | mean validation "
        f"Dice {validation_mean('icmoe', 3e-4)}, against {validation_mean('icmoe', 1e-3)} at 1e-3")),
    Claim("method: the learning rate", METHOD, lambda: (
        f"IC-MoE's best learning rate averaged over the tasks is 3e-4 (mean validation Dice "
        f"{validation_mean('icmoe', 3e-4)}, against {validation_mean('icmoe', 1e-3)} at 1e-3;")),
    Claim("method: the nuclei test set", METHOD, lambda: (
        f"The real nuclei test set is {NUCLEI_SET}, so its per-object bootstrap treats correlated objects as "
        f"independent.")),
    *[Claim(f"method: ablation at the reference's rate, {method}", METHOD,
            lambda label=label, method=method: table_row(
        label, lambda task: dice(task, method), lambda task: lower_than_reference(task, method))[:-1])
      for label, method in ABLATION_ROWS],
    *[Claim(f"method: the default on the test split, {task}", METHOD, lambda name=name, task=task: (
        f"| {name} | {dice(task, REFERENCE)} | **{dice(task, 'icmoe')}** "
        f"({chosen_rate(ACC, task, 'icmoe'):.0e}) | {dice(task, 'lora_matched')} | {dice(task, 'adapter')} | "
        f"{dice(task, 'full')} |").replace("e-0", "e-"))
      for name, task in (("MR lesion (simulated)", MR), ("US lesion (simulated)", US), ("nuclei (real)", NUC))],
    Claim("method: the pixel votes turned off, four seeds", METHOD, lambda: (
        f"| with the pixel votes and the vote loss (`icmoe_round4`) | "
        f"{validation_row(VOTES_FILES, VOTES_RATES, **VOTES_ON)} |\n"
        f"| **without the pixel votes and the vote loss** | "
        + " | ".join([validation_row(VOTES_FILES, VOTES_RATES).split(" | ")[0],
                      *(f"**{cell}**" for cell in validation_row(VOTES_FILES, VOTES_RATES).split(" | ")[1:])]) + " |")),
    Claim("method: the pixel votes per seed", METHOD, lambda: (
        f"Per seed (without minus with): MR {votes_per_seed(MR)}; US {votes_per_seed(US)};")),
    *[Claim(f"method: the contrastive loss on, {rate}", METHOD, lambda rate=rate: (
        f"| with the contrastive loss (0.01, `icmoe_round3`) | {rate} | "
        f"{validation_row(CONTRASTIVE_FILES, {MR: float(rate), US: float(rate)}, **CONTRASTIVE_ON)} |"))
      for rate in ("3e-4", "1e-3")],
    Claim("method: the contrastive loss off, 3e-4", METHOD, lambda: (
        f"| without the contrastive loss | 3e-4 | "
        f"{validation_row(CONTRASTIVE_FILES, {MR: 3e-4, US: 3e-4}, **VOTES_ON)} |")),
    Claim("method: the contrastive loss off, 1e-3", METHOD, lambda: (
        f"| **without the contrastive loss** | **1e-3** | "
        f"{validation_row(CONTRASTIVE_FILES, CONTRASTIVE_RATES, bold=True, **VOTES_ON)} |")),
    Claim("method: the default on ultrasound", METHOD, lambda: (
        f"IC-MoE stays the best parameter-efficient method on ultrasound ({mean(US, 'icmoe')} against LoRA's "
        f"{mean(US, 'lora_matched')}, {gap(US, 'full', 'icmoe')} from full fine-tuning)")),

    Claim("method: the gated linear mixture on the test split", METHOD, lambda: (
        f"MR {dice(MR, 'bridge_split_linear_dense_rs5', BRIDGE)} (3e-4; LoRA {dice(MR, 'lora_matched')}, the default "
        f"{dice(MR, 'icmoe')}), US {dice(US, 'bridge_split_linear_dense_rs5', BRIDGE)} (3e-3; LoRA "
        f"{dice(US, 'lora_matched')}, the default {dice(US, 'icmoe')})")),
    *[Claim(f"method: five seeds, {task}", METHOD, lambda name=name, task=task: (
        f"| {name} | {dice(task, 'icmoe', FIVE)} | {dice(task, 'lora_matched', FIVE)} | "
        f"{dice(task, 'adapter', FIVE)} |"))
      for name, task in (("MR lesion (simulated)", MR), ("US lesion (simulated)", US), ("nuclei (real)", NUC))],
    Claim("method: five seeds, MR per seed", METHOD, lambda: "IC-MoE minus LoRA per seed " + ", ".join(
        f"{a - b:+.4f}" for a, b in zip(seed_dice(FIVE, MR, "icmoe"), seed_dice(FIVE, MR, "lora_matched")))),
    *[Claim(f"method: ten seeds, {task}", METHOD, lambda name=name, task=task: (
        f"| {name} | {dice(task, 'icmoe', TEN)} | {dice(task, 'lora_matched', TEN)} | {dice(task, 'adapter', TEN)} | "
        f"{gap(task, 'icmoe', 'lora_matched', TEN, '+.3f')} {interval(TEN, task, 'icmoe', 'lora_matched')};"))
      for name, task in (("US lesion (simulated, 100 objects)", US), ("MR lesion (simulated, 100 objects)", MR),
                         ("nuclei (real, 19 objects)", NUC))],
    Claim("method: ten seeds, the spread target", METHOD, lambda: (
        f"holds on MR ({spread(MR, 'icmoe', TEN, 4)} against {spread(MR, 'adapter', TEN, 4)}) and not on ultrasound "
        f"({spread(US, 'icmoe', TEN, 4)} against {spread(US, 'adapter', TEN, 4)}) or the nuclei "
        f"({spread(NUC, 'icmoe', TEN, 4)} against {spread(NUC, 'adapter', TEN, 4)})")),
    *[Claim(f"method: own-rate ablation, {method}", METHOD,
            lambda label=label, method=method: own_rate_row(label, method))
      for label, method in ABLATION_ROWS if method != "icmoe"],
    Claim("method: the default job", METHOD, lambda: (
        f"reached {default_run_dice(' / ')} ({mean_std([run['dice'] for run in default_run()['runs']])}) "
        f"against zero-shot "
        f"{default_run_seed(42)['zero_shot']['dice']:.3f}")),
    # docs/HISTORY.md: the rounds (their tables are checked by column below)
    Claim("history: the fourth round on the nuclei", HISTORY, lambda: (
        f"real nuclei LoRA at matched parameters is {gap(NUC, 'lora_matched', REFERENCE)} ahead and full fine-tuning "
        f"{gap(NUC, 'full', REFERENCE)}")),
    Claim("history: the ninth round on the nuclei", HISTORY, lambda: (
        f"19 nuclei IC-MoE is behind in every seed, {gap(NUC, 'icmoe', 'lora_matched', TEN, '+.3f').replace('+', '')}, "
        f"but the interval over objects reaches {interval(TEN, NUC, 'icmoe', 'lora_matched').split(', ')[1][:-1]}")),
    Claim("history: the nuclei test set", HISTORY, lambda: (
        f"is {NUCLEI_SET} throughout, so its per-object bootstrap treats correlated objects as independent.")),
]


@pytest.mark.parametrize("claim", CLAIMS, ids=[claim.label for claim in CLAIMS])
def test_published_number_is_its_results_file(claim):
    expected = flat(claim.text())
    if expected not in flat(document(claim.document)):
        pytest.fail(f"{claim.document} should say: {expected}")


EARLIER_ABLATIONS = [  # (section of HISTORY.md, row label, file, method, tasks)
    *[("## Second round", label, "accuracy_round2.json", method, (MR, US)) for label, method in (
        ("nothing (default)", "icmoe"), ("semantic experts", "icmoe_no_semantic"), ("shared expert", "icmoe_no_shared"),
        ("top-2 routing (dense instead)", "icmoe_dense"),
        ("pixel-probability voting and the vote loss", "icmoe_no_voting"), ("pixel loss", "icmoe_no_pixel_loss"),
        ("contrastive loss", "icmoe_no_contrastive"))],
    ("## Third round", "nothing (default, beside `qkv`)", ACC, "icmoe_round3", (MR, US)),
    *[("## Third round", label, "accuracy_round3_ablations.json", method, (MR, US)) for label, method in (
        ("basic experts (routed and shared)", "icmoe_no_basic"), ("shared expert", "icmoe_no_shared"),
        ("semantic experts", "icmoe_no_semantic"), ("adaptive experts", "icmoe_no_adaptive"),
        ("load balancing", "icmoe_no_balance"), ("top-2 routing (top-1 instead)", "icmoe_top1"),
        ("top-2 routing (dense instead)", "icmoe_dense"),
        ("pixel-probability voting and the vote loss", "icmoe_no_voting"), ("pixel loss", "icmoe_no_pixel_loss"),
        ("contrastive loss", "icmoe_no_contrastive"))],
    *[("## Fourth round", name, ACC, method, TASKS) for name, method in (
        ("round-3 default", "icmoe_round3"), ("**current default**", REFERENCE))],
]


def table_cells(section: str, label: str, name: str = HISTORY) -> list[str]:
    """The cells after the label of the first row `label` from `section` of document `name` to the next `## `
    heading, emphasis markers removed."""
    text = between(document(name) + "\n## ", section, "\n## ")
    row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [re.sub(r"\*\*|\*\(s\)\*|\*", "", cell).strip() for cell in row.split("|")[2:-1]]


@pytest.mark.parametrize("section, label, file, method, tasks", EARLIER_ABLATIONS)
def test_earlier_rounds_rows_are_their_results_files(section, label, file, method, tasks):
    """HISTORY.md's tables of the earlier rounds: test Dice per task, by column (the fourth round's by row)."""
    if section == "## Fourth round":  # one column per method, one row per task
        rows = (("MR lesion (simulated)", MR), ("US lesion (simulated)", US), ("nuclei (real)", NUC))
        column = 0 if method == "icmoe_round3" else 1
        assert [table_cells(section, name)[column] for name, _ in rows] == [dice(t, method, file) for _, t in rows]
    else:
        assert table_cells(section, label)[:len(tasks)] == [dice(task, method, file) for task in tasks]


@pytest.mark.parametrize("label, method", PAIRED_ROWS)
def test_paired_ablation_row_is_its_results_file(label, method):
    """docs/METHOD.md's ablations with intervals: reference minus removal, three decimals, per task (markers aside)."""
    cells = table_cells("### The ablations with intervals", label, METHOD)[:3]
    assert cells == [gap(task, REFERENCE, method, PAIRED, "+.3f") for task in TASKS]


def test_the_chosen_rates_at_a_grid_edge_are_the_ones_the_prose_names():
    """docs/BENCHMARKS.md names every main method whose chosen rate sits at an end of its grid."""
    data = results(ACC)
    main = ("decoder", "lora", "lora_matched", "adapter", "adapter_matched", "full", "icmoe")
    edges = set()
    for task in TASKS:
        for method in main:
            grid = sorted({r["learning_rate"] for r in data["selection"]
                           if r["dataset"] == task and r["method"] == method})
            chosen = chosen_rate(ACC, task, method)
            if chosen in (grid[0], grid[-1]):
                edges.add((task, method, "lowest" if chosen == grid[0] else "top"))
    assert edges == {
        (NUC, "decoder", "lowest"), (NUC, "lora", "lowest"), (NUC, "lora_matched", "lowest"),
        (NUC, "adapter", "lowest"), (NUC, "full", "lowest"),
        (US, "adapter", "top"), (US, "adapter_matched", "top"), (US, "icmoe", "top"),
        (MR, "decoder", "top"),
    }
    prose = flat(document(BENCHMARKS))
    assert ("on the nuclei, where LoRA, the adapter, decoder-only and full fine-tuning chose the new lowest values "
            "(3e-5, 1e-5) too, on ultrasound, where 3e-3, the top of the adapter and IC-MoE grids, wins") in prose
    assert "and on MR, where decoder-only chose 1e-3, the top of its grid." in prose


def test_the_default_run_file_is_the_readme_command():
    """`benchmarks/results/default_run.json` records the README's main command, one run per seed."""
    data = default_run()
    assert data["command"] == "accelerate launch training/run.py"
    assert f"&& {data['command']}\n" in document(README)
    assert [run["seed"] for run in data["runs"]] == data["seeds"] and len(data["seeds"]) >= 3
    for run in data["runs"]:
        assert run["command"].startswith(data["command"]) and run["train_steps"] == 1500
    dice = [run["dice"] for run in data["runs"]]
    assert data["icmoe"]["dice_mean"] == pytest.approx(np.mean(dice))
    assert data["icmoe"]["dice_std"] == pytest.approx(np.std(dice, ddof=1))


def test_the_default_run_script_runs_the_readme_command_per_seed(tmp_path):
    from benchmarks.default_run import DEFAULT_SEED, seed_command, summary

    assert seed_command(DEFAULT_SEED, tmp_path) == ["accelerate", "launch", "training/run.py", "--output_dir", str(tmp_path)]
    assert seed_command(0, tmp_path)[3:5] == ["--seed", "0"]
    assert summary([{"dice": 0.7}, {"dice": 0.8}]) == pytest.approx(
        {"dice_mean": 0.75, "dice_std": np.std([0.7, 0.8], ddof=1), "dice_min": 0.7, "dice_max": 0.8})


@pytest.mark.parametrize("name", ["accuracy", "accuracy_ten_seeds", "accuracy_ablations_paired"])
def test_generated_accuracy_sections_are_their_results_files(name):
    """The generated sections of docs/BENCHMARKS.md are what `benchmarks/accuracy.py --report` renders now."""
    from benchmarks.accuracy_report import markers, render_section

    begin, end = markers(name)
    text = document(BENCHMARKS)
    section = text[text.index(begin):text.index(end) + len(end)] + "\n"
    assert section == render_section(results(f"{name}.json"), f"figures/{name}.png", name)


def test_every_document_of_the_record_is_checked():
    """Each document that quotes the results files has its claims here, and says what the nuclei test set is."""
    checked = {claim.document for claim in CLAIMS}
    assert checked == set(DOCUMENTS)
    for name in DOCUMENTS:
        assert NUCLEI_SET in flat(document(name)), name
