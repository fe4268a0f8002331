"""Accuracy benchmark: test Dice, IoU and HD95 of every fine-tuning method on every task, seeded and tuned fairly.

What it measures: for each task of `benchmarks/tasks/tasks.json` and each method (zero-shot SAM, decoder-only,
LoRA, bottleneck adapter, full fine-tuning, IC-MoE, LoRA and adapter at IC-MoE's encoder budget, and IC-MoE
ablations), the test-split metrics of `training/run.py` over several training seeds.

How: every run calls the training code itself, `training.loop.run(training.arguments.parse_args(argv))`, in this
process. Methods are data: run.py arguments plus, for IC-MoE variants, field overrides of the default
`IcMoeAdapterConfig` written to a preset for `--icmoe_config`. Per (task, method) the learning rate is chosen
from a grid by Dice on a validation split carved from the train split (a fixed 20 % of its rows, whole images
only, seed 0; the test split is never looked at), averaged over the selection seeds (default: training seed 0);
then each seed trains on the whole train split at that rate and is scored on the test split
(`--selection_only` stops before that: the way to compare candidate configurations without seeing the test split). Every method gets the same steps and batch size.
`lora_matched` and `adapter_matched` use the rank whose trainable encoder parameters come closest to IC-MoE's.

The JSON is saved after every run; a restart skips runs already recorded with identical settings.

    python benchmarks/accuracy.py                                    # every task, the main methods, seeds 0 1 2
    python benchmarks/accuracy.py --methods icmoe icmoe_no_basic icmoe_no_voting icmoe_top1   # ablations, same file
    python benchmarks/accuracy.py --base_model facebook/sam-vit-base --tasks dsb2018_nuclei   # real SAM (GPU)
    python benchmarks/accuracy.py --report                           # re-render docs/BENCHMARKS.md from the JSON
    python benchmarks/accuracy.py --smoke --work_dir /tmp/acc        # tiny end-to-end check, under a minute on CPU

Writes `benchmarks/results/accuracy.json` and the section between the accuracy markers of `docs/BENCHMARKS.md`
(text outside the markers is kept), with its figure in `docs/figures/accuracy.png`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from benchmarks.sections import write_section  # noqa: E402
from modeling_icmoe import IcMoeAdapterConfig  # noqa: E402
from training.arguments import DEFAULT_BASE_MODEL  # noqa: E402

TASKS_FILE = REPO_ROOT / "benchmarks" / "tasks" / "tasks.json"
FALLBACK_TASKS = [
    {"name": "dsb2018_nuclei", "path": "training/data/dsb2018_nuclei", "modality": "fluorescence microscopy",
     "prompt": "box", "simulated": False, "description": "Embedded DSB2018 nuclei tiles (one nucleus per row)."}
]

# IC-MoE variants as overrides of the default `IcMoeAdapterConfig`: the one table to edit when its fields change.
ALL_ROUTED = "all"  # top-k = every routed expert left after the other overrides
ROUTED_EXPERT_FIELDS = ("num_basic_experts", "num_semantic_experts", "num_adaptive_experts")
# The ablations were measured around the third-round default, whose semantic-guided contrastive loss (weight 0.01)
# the fourth round turned off (docs/METHOD.md): they keep that weight, so that each differs from `icmoe_round3` by
# one change and their records stay valid; `icmoe_no_contrastive` is the current default's config.
ROUND3 = {"contrastive_loss_coef": 0.01}
ICMOE_VARIANTS: dict[str, dict] = {
    "icmoe": {},
    "icmoe_round3": ROUND3,
    "icmoe_no_basic": {**ROUND3, "num_basic_experts": 0, "num_shared_experts": 0},  # shared experts are basic too
    "icmoe_no_shared": {**ROUND3, "num_shared_experts": 0},
    "icmoe_no_semantic": {**ROUND3, "num_semantic_experts": 0},
    "icmoe_no_adaptive": {**ROUND3, "num_adaptive_experts": 0},
    # Router only: pixel votes neither route tokens nor teach the router.
    "icmoe_no_voting": {**ROUND3, "pixel_vote_weight": 0.0, "vote_loss_coef": 0.0},
    "icmoe_no_pixel_loss": {**ROUND3, "pixel_loss_coef": 0.0},
    "icmoe_no_contrastive": {"contrastive_loss_coef": 0.0},
    "icmoe_no_balance": {**ROUND3, "router_aux_loss_coef": 0.0},
    "icmoe_top1": {**ROUND3, "num_experts_per_tok": 1},
    "icmoe_top2": {**ROUND3, "num_experts_per_tok": 2},
    "icmoe_dense": {**ROUND3, "num_experts_per_tok": ALL_ROUTED},
}
ABLATIONS = tuple(name for name in ICMOE_VARIANTS if name != "icmoe")
# Candidate recipes for the default config, compared with `--selection_only` on validation splits (docs/METHOD.md).
ICMOE_CANDIDATES: dict[str, dict] = {
    "icmoe_scale1": {"expert_output_scale": 1.0},
    "icmoe_lean": {"num_adaptive_experts": 0, "contrastive_loss_coef": 0.0},
    "icmoe_contrast0.1": {"contrastive_loss_coef": 0.1},  # the two named ideas given more weight
    "icmoe_vote4": {"pixel_vote_weight": 4.0},
    # Experts beside the attention's qkv projection (what LoRA adapts); rank 8 keeps the default's parameter count.
    "icmoe_attention": {"expert_placement": "attention"},
    "icmoe_attention_r8": {"expert_placement": "attention", "expert_rank": 8},
    "icmoe_attention_r8_scale1": {"expert_placement": "attention", "expert_rank": 8, "expert_output_scale": 1.0},
}
ICMOE_VARIANTS.update(ICMOE_CANDIDATES)
MAIN_METHODS = ("zeroshot", "decoder", "lora", "lora_matched", "adapter", "adapter_matched", "full", "icmoe")
# Benchmark method -> run.py --method.
RUN_METHOD = {
    "zeroshot": "zeroshot", "decoder": "decoder", "lora": "lora", "lora_matched": "lora",
    "adapter": "adapter", "adapter_matched": "adapter", "full": "full", **{name: "icmoe" for name in ICMOE_VARIANTS},
}
MATCHED_RANK = {"lora_matched": "lora", "adapter_matched": "adapter"}  # searched at IC-MoE's encoder budget
DEFAULT_RANKS = {"lora": 4, "adapter": 64}  # run.py's defaults, used by the unmatched `lora` and `adapter`
MATCH_TOLERANCE = 0.2

# Learning-rate grids per run.py method (`--lr_grid` replaces all of them).
# The first full run (MR task) chose the lowest value of the (3e-4, 1e-3, 3e-3) grids for LoRA and both adapters:
# a best value at the edge of a grid says the grid must extend past it, hence 1e-4.
# Over both rounds 3e-3 was never best for the adapters or IC-MoE (and diverged on MR: validation Dice 0.46), so
# their grids stop at 1e-3. LoRA chose 3e-3, the top of its grid, on US in both rounds: its grid goes on to 1e-2.
# Full fine-tuning chose 3e-4, the top of its grid, on both simulated tasks in the second round: on to 1e-3.
DEFAULT_LR_GRID = {
    "decoder": (1e-4, 3e-4, 1e-3),
    "full": (3e-5, 1e-4, 3e-4, 1e-3),
    "lora": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "adapter": (1e-4, 3e-4, 1e-3, 3e-3),
    "icmoe": (1e-4, 3e-4, 1e-3, 3e-3),
}
VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 0  # the split's seed, independent of the training seeds
# What an unset option means, for the benchmark (`DEFAULTS`) and for `--smoke` (`SMOKE`); `lr_grid` None = the table.
DEFAULTS = {"tasks": None, "methods": list(MAIN_METHODS), "seeds": [0, 1, 2], "selection_seeds": [0], "lr_grid": None,
            "max_train_steps": 300,
            "max_train_samples": None, "max_eval_samples": None, "dataloader_num_workers": None, "num_threads": None}
# One thread in the smoke run: its models are tiny, and idle OpenMP threads spinning on a busy CPU cost 2-3x the time.
SMOKE = {"tasks": ["dsb2018_nuclei"], "methods": ["zeroshot", "adapter", "icmoe"], "seeds": [0], "selection_seeds": [0],
         "lr_grid": [1e-3, 3e-3], "max_train_steps": 2, "max_train_samples": 8, "max_eval_samples": 4,
         "dataloader_num_workers": 0, "num_threads": 1}
# Settings every record of one results file shares; a resume with other values must start a new file.
SHARED_SETTINGS = ("base_model", "max_train_steps", "per_device_train_batch_size", "max_train_samples",
                   "max_eval_samples", "validation_fraction", "validation_seed", "selection_seeds")
KEEP_OUTPUTS = ("eval_results.json", "train_log.jsonl")
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "accuracy.json"
DEFAULT_REPORT = REPO_ROOT / "docs" / "BENCHMARKS.md"
METRICS = ("dice", "dice_std", "iou", "iou_std", "hd95", "hd95_std", "n_images")
MARK_BEGIN, MARK_END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=None, help="Task names (default: every task).")
    parser.add_argument("--methods", nargs="+", default=None, choices=list(RUN_METHOD), metavar="METHOD",
                        help=f"Default: {' '.join(MAIN_METHODS)}. Ablations: {' '.join(ABLATIONS)}. "
                             f"Candidate defaults: {' '.join(ICMOE_CANDIDATES)}.")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="Training seeds (default 0 1 2).")
    parser.add_argument("--selection_seeds", nargs="+", type=int, default=None,
                        help="Training seeds of the learning-rate selection runs; the validation Dice is averaged "
                             "over them (default 0).")
    parser.add_argument("--selection_only", action="store_true",
                        help="Only the validation runs: choose each method's learning rate, train nothing on the "
                             "whole train split, never touch the test split.")
    parser.add_argument("--lr_grid", nargs="+", type=float, default=None,
                        help="One grid for every method (default: the per-method table at the top of this file).")
    parser.add_argument("--max_train_steps", type=int, default=None, help="Default 300, equal for all methods.")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--dataloader_num_workers", type=int, default=None)
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--base_model", default=str(DEFAULT_BASE_MODEL))
    parser.add_argument("--output", default=None, help="Default benchmarks/results/accuracy.json (--smoke: work dir).")
    parser.add_argument("--work_dir", default=str(REPO_ROOT / "benchmarks" / ".cache" / "accuracy"),
                        help="Validation splits, presets and run outputs.")
    parser.add_argument("--report_path", default=None, help="Default docs/BENCHMARKS.md (--smoke: work dir).")
    parser.add_argument("--fresh", action="store_true", help="Discard the results file instead of resuming it.")
    parser.add_argument("--report", action="store_true", help="Only render the report from the results file.")
    parser.add_argument("--smoke", action="store_true", help="Tiny settings: " + json.dumps(SMOKE))
    args = parser.parse_args(argv)
    args.command = "python benchmarks/accuracy.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    for key in DEFAULTS:
        if getattr(args, key) is None:
            setattr(args, key, (SMOKE if args.smoke else DEFAULTS)[key])
    # A smoke run writes into its work folder unless told otherwise: it must not overwrite the real results.
    work = Path(args.work_dir)
    args.output = Path(args.output or (work / "accuracy.json" if args.smoke else DEFAULT_OUTPUT))
    args.report_path = Path(args.report_path or (work / "BENCHMARKS.md" if args.smoke else DEFAULT_REPORT))
    for name in ("max_train_steps", "per_device_train_batch_size", "max_train_samples", "max_eval_samples"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.lr_grid is not None and any(lr <= 0 for lr in args.lr_grid):
        parser.error(f"--lr_grid values must be positive, got {args.lr_grid}")
    return args


# ----------------------------------------------------------------------------------------------- tasks and data
def load_tasks(names: list[str] | None) -> list[dict]:
    tasks = json.loads(TASKS_FILE.read_text()) if TASKS_FILE.is_file() else FALLBACK_TASKS
    by_name = {task["name"]: task for task in tasks}
    if names is None:
        return tasks
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"Unknown task(s) {missing}; {TASKS_FILE.name} has {sorted(by_name)}.")
    return [by_name[name] for name in names]


def task_fingerprint(task: dict) -> str:
    """Content hash of the task's row list, so that a regenerated task is not mistaken for the recorded one."""
    metadata = REPO_ROOT / task["path"] / "metadata.csv"
    return hashlib.sha256(metadata.read_bytes()).hexdigest()[:12]


def grouped_validation_split(groups: list[str], *, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) row indices with about `fraction` of the rows in validation and every group (image)
    wholly on one side. Depends only on the multiset of groups and the seed, not on the row order."""
    sizes = Counter(groups)
    if len(sizes) < 2:
        raise ValueError(f"A grouped validation split needs at least two images, got {len(sizes)}.")
    unique = sorted(sizes)
    target = fraction * len(groups)
    held_out, count = set(), 0
    for index in np.random.default_rng(seed).permutation(len(unique)):
        if count >= target:
            break
        group = unique[index]
        # Whole groups only: skip one that would overshoot the target by more than it is now undershot.
        if abs(count + sizes[group] - target) < abs(count - target):
            held_out.add(group)
            count += sizes[group]
    if not held_out:  # every group is over twice the target
        held_out = {min(unique, key=lambda group: (sizes[group], group))}
    if len(held_out) == len(unique):
        held_out.discard(unique[-1])
    validation = [i for i, group in enumerate(groups) if group in held_out]
    train = [i for i, group in enumerate(groups) if group not in held_out]
    return train, validation


def validation_dataset(task: dict, cache_dir: Path) -> tuple[Path, str]:
    """The task's train split cut into `train` and `validation`, as a `save_to_disk` folder (cached), and an id of
    the held-out rows (part of the selection runs' settings: a changed split reruns them)."""
    import datasets

    from training.data import load_raw_dataset

    task_dir = REPO_ROOT / task["path"]
    train = load_raw_dataset(str(task_dir), image_column="image", mask_column="mask")["train"]
    files = train.cast_column("image", datasets.Image(decode=False))["image"]
    groups = [os.path.relpath(f["path"], task_dir) if f["path"] else hashlib.sha1(f["bytes"]).hexdigest()
              for f in files]
    train_rows, validation_rows = grouped_validation_split(groups, fraction=VALIDATION_FRACTION, seed=VALIDATION_SEED)
    split_id = hashlib.sha256(json.dumps([task_fingerprint(task), validation_rows]).encode()).hexdigest()[:12]
    folder = cache_dir / f"{task['name']}-{split_id}"
    if (folder / "dataset_dict.json").is_file():
        return folder, split_id
    split = datasets.DatasetDict({"train": train.select(train_rows), "validation": train.select(validation_rows)})
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    split.save_to_disk(str(partial))  # embeds the image bytes: the folder stands alone
    partial.rename(folder)
    return folder, split_id


# ------------------------------------------------------------------------------------- methods and their budgets
def icmoe_variant_config(overrides: dict) -> IcMoeAdapterConfig:
    """The default adapter config with `overrides`, top-k clamped to the routed experts that remain.

    Built from the class defaults rather than by `dataclasses.replace` on a built config, so that derived fields
    (one dilation per semantic expert) follow the overridden counts instead of keeping the default's."""
    default = IcMoeAdapterConfig()
    values = dict(overrides)
    routed = sum(values.get(name, getattr(default, name)) for name in ROUTED_EXPERT_FIELDS)
    top_k = values.get("num_experts_per_tok", default.num_experts_per_tok)
    values["num_experts_per_tok"] = routed if top_k == ALL_ROUTED else max(1, min(top_k, routed))
    return IcMoeAdapterConfig(**values)


def count_encoder_params(run_method: str, base_model: str, *, icmoe_config=None, lora_rank=4, adapter_rank=64) -> int:
    from transformers.utils import logging

    from training.methods import build_model, encoder_trainable_params

    if run_method == "zeroshot":
        return 0
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # every build would print the adapters' missing-weights report
    try:
        model = build_model(run_method, base_model, icmoe_config=icmoe_config or IcMoeAdapterConfig(),
                            lora_rank=lora_rank, adapter_rank=adapter_rank)
    finally:
        logging.set_verbosity(verbosity)
    return encoder_trainable_params(model)


def matched_ranks(base_model: str, recorded: dict | None = None) -> dict:
    """LoRA and adapter ranks at IC-MoE's (default config) trainable encoder parameters, with the counts.

    `recorded`: the matched ranks of an existing results file. A recorded rank is kept while its count stays within
    the tolerance of the current target, so that a change of IC-MoE's default inside the tolerance does not make
    every matched baseline's runs stale."""
    from training.methods import match_rank

    target = count_encoder_params("icmoe", base_model)
    matched = {"icmoe_encoder_params": target, "tolerance": MATCH_TOLERANCE}
    for kind in ("lora", "adapter"):
        kept = (recorded or {}).get(f"{kind}_encoder_params")
        if kept is not None and abs(kept - target) <= MATCH_TOLERANCE * target:
            matched[f"{kind}_rank"], matched[f"{kind}_encoder_params"] = recorded[f"{kind}_rank"], kept
            continue
        cache: dict[int, int] = {}

        def count(rank: int, kind=kind, cache=cache) -> int:
            if rank not in cache:
                cache[rank] = count_encoder_params(kind, base_model, **{f"{kind}_rank": rank})
            return cache[rank]

        rank, params = match_rank(count, target)
        if abs(params - target) > MATCH_TOLERANCE * target:
            raise ValueError(f"No {kind} rank gets within {MATCH_TOLERANCE:.0%} of IC-MoE's {target} encoder "
                             f"parameters (best: rank {rank} with {params}).")
        matched[f"{kind}_rank"], matched[f"{kind}_encoder_params"] = rank, params
    return matched


def method_run_args(method: str, matched: dict) -> tuple[list[str], IcMoeAdapterConfig | None, dict]:
    """run.py arguments of `method`, its adapter config (IC-MoE variants) and what to record about it."""
    run_method = RUN_METHOD[method]
    argv, info = ["--method", run_method], {}
    if run_method in DEFAULT_RANKS:
        rank = matched[f"{run_method}_rank"] if method in MATCHED_RANK else DEFAULT_RANKS[run_method]
        argv += [f"--{run_method}_rank", str(rank)]
        info[f"{run_method}_rank"] = rank
    config = None
    if method in ICMOE_VARIANTS:
        config = icmoe_variant_config(ICMOE_VARIANTS[method])
        info["icmoe_overrides"] = ICMOE_VARIANTS[method]
    return argv, config, info


# ------------------------------------------------------------------------------------------------------ running
def portable(path: str | Path) -> str:
    """A path relative to the repository when inside it, so that settings compare across checkouts."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def train_and_score(argv: list[str], output_dir: Path) -> dict:
    """One run of the training code; keeps only its small outputs."""
    from training.arguments import parse_args as parse_run_args
    from training.loop import run

    shutil.rmtree(output_dir, ignore_errors=True)  # a run interrupted earlier left a partial folder
    results = run(parse_run_args(argv + ["--output_dir", str(output_dir)]))
    for entry in output_dir.iterdir():
        if entry.name not in KEEP_OUTPUTS:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return results


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return f"{device}; {platform.platform()}; Python {platform.python_version()}; torch {torch.__version__}"


MERGED_PROTOCOL_KEYS = ("tasks", "icmoe_variants", "lr_grid", "trainable_encoder_params")


def save(data: dict, path: Path, own: set[tuple[str, str]] | None = None) -> None:
    """Writes `data` atomically. With `own`, the (task, method) pairs this process runs, the file's records of every
    other pair are kept, under a lock: several processes can share one results file as long as none runs a pair
    another runs (split them with `--tasks` and `--methods`)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if own is not None and path.is_file():
            on_disk = json.loads(path.read_text())
            for table in ("selection", "records"):
                others = [r for r in on_disk.get(table, []) if (r["dataset"], r["method"]) not in own]
                data[table][:] = others + [r for r in data[table] if (r["dataset"], r["method"]) in own]
            for key in MERGED_PROTOCOL_KEYS:
                data["protocol"][key] = {**on_disk["protocol"].get(key, {}), **data["protocol"].get(key, {})}
            commands = on_disk["protocol"].get("commands", []) + data["protocol"].get("commands", [])
            data["protocol"]["commands"] = list(dict.fromkeys(commands))
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(partial, path)  # atomic: a stop mid-write keeps the previous file


class Benchmark:
    """The loop over (task, method): selection runs, then seeded final runs, saving after each run."""

    def __init__(self, args: argparse.Namespace, data: dict):
        self.args, self.data = args, data
        self.work = Path(args.work_dir).resolve()
        self.executed = self.reused = 0
        self.validation: dict[str, tuple[Path, str]] = {}
        self.own = {(task["name"], method) for task in load_tasks(args.tasks) for method in args.methods}

    def common_args(self, task: dict) -> list[str]:
        args = self.args
        argv = ["--prompt", task["prompt"], "--num_example_figures", "0",
                "--max_train_steps", str(args.max_train_steps),
                "--per_device_train_batch_size", str(args.per_device_train_batch_size)]
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(args, name) is not None:
                argv += [f"--{name}", str(getattr(args, name))]
        return argv

    def run(self, kind: str, task: dict, method: str, seed: int, lr: float | None) -> dict:
        """The record of one run: reused when one with identical settings exists, else trained and saved."""
        run_method_args, config, info = method_run_args(method, self.data["protocol"]["matched_ranks"])
        settings = {
            "task": task["name"], "task_fingerprint": task_fingerprint(task),
            "split": "train -> test",
            "method": method, "seed": seed, "learning_rate": lr, "base_model": portable(self.args.base_model),
            "run_args": self.common_args(task) + run_method_args,
            "icmoe_config": config.to_dict() if config else None,
        }
        if kind == "selection":
            if task["name"] not in self.validation:
                self.validation[task["name"]] = validation_dataset(task, self.work / "splits")
            validation_folder, settings["validation_split"] = self.validation[task["name"]]
            settings["split"] = "train[grouped, without validation] -> validation"
        table = self.data[kind]
        for record in table:
            if record["settings"] == settings:
                self.reused += 1
                return record
        name = f"select_lr{lr:g}_seed{seed}" if kind == "selection" else f"seed{seed}"
        folder = self.work / "runs" / task["name"] / method / name
        argv = ["--base_model", self.args.base_model, *self.common_args(task), *run_method_args, "--seed", str(seed)]
        if kind == "selection":
            argv += ["--dataset", str(validation_folder), "--eval_split", "validation"]
        else:
            argv += ["--dataset", str(REPO_ROOT / task["path"]), "--eval_split", "test"]
        if lr is not None:
            argv += ["--learning_rate", repr(lr), "--no_zeroshot_eval"]
        if config is not None:
            preset = self.work / "presets" / task["name"] / f"{method}.json"  # one writer per task and file
            preset.parent.mkdir(parents=True, exist_ok=True)
            config.to_json_file(preset)
            argv += ["--icmoe_config", str(preset)]
        if self.args.dataloader_num_workers is not None:
            argv += ["--dataloader_num_workers", str(self.args.dataloader_num_workers)]
        print(f"[accuracy] {kind}: {task['name']} / {method} / seed {seed} / lr {lr}", flush=True)
        results = train_and_score(argv, folder)
        self.executed += 1
        prefix = "val_" if kind == "selection" else ""
        record = {
            "dataset": task["name"], "method": method, "seed": seed, "learning_rate": lr,
            "modality": task.get("modality"), "prompt": task["prompt"], "simulated": bool(task.get("simulated")),
            **{prefix + key: results[key] for key in METRICS},
            "trainable_params": results["trainable_params"],
            "trainable_encoder_params": self.encoder_params(method),
            "train_steps": results["train_steps"], "train_seconds": results["train_seconds"],
            "run_method": RUN_METHOD[method], **info, "machine": machine(), "settings": settings,
        }
        if "diagnostics" in results:
            record["diagnostics"] = results["diagnostics"]
        same_slot = ("dataset", "method", "seed") + (("learning_rate",) if kind == "selection" else ())
        table[:] = [r for r in table if any(r[k] != record[k] for k in same_slot)] + [record]
        save(self.data, self.args.output, self.own)
        return record

    def encoder_params(self, method: str) -> int:
        _, config, info = method_run_args(method, self.data["protocol"]["matched_ranks"])
        ranks = {k: v for k, v in info.items() if k.endswith("_rank")}
        # Keyed by what is built, not by the method's name: a method keeps its name when the default config changes.
        key = json.dumps([RUN_METHOD[method], config.to_dict() if config else None, ranks], sort_keys=True)
        cache = self.data["protocol"].setdefault("trainable_encoder_params", {})
        if key not in cache:
            cache[key] = count_encoder_params(RUN_METHOD[method], self.args.base_model, icmoe_config=config, **ranks)
        return cache[key]

    def task_method(self, task: dict, method: str) -> None:
        lr = None
        grid = self.args.lr_grid or DEFAULT_LR_GRID.get(RUN_METHOD[method], ())
        if method != "zeroshot" and len(grid) == 1:  # nothing to choose: no validation runs
            lr = grid[0]
            self.data["records"][:] = [r for r in self.data["records"] if (r["dataset"], r["method"]) !=
                                       (task["name"], method) or r["learning_rate"] == lr]
        elif method != "zeroshot":
            seeds = self.args.selection_seeds
            runs = {value: [self.run("selection", task, method, seed, value) for seed in seeds] for value in grid}
            self.data["selection"][:] = [r for r in self.data["selection"] if (r["dataset"], r["method"]) !=
                                         (task["name"], method) or (r["learning_rate"] in runs and r["seed"] in seeds)]
            lr = max(grid, key=lambda value: validation_score(runs[value]))
            for value, records in runs.items():
                for record in records:
                    record["chosen"] = value == lr
            # Seeds run earlier at another rate were tuned under another grid: they no longer belong.
            self.data["records"][:] = [r for r in self.data["records"] if (r["dataset"], r["method"]) !=
                                       (task["name"], method) or r["learning_rate"] == lr]
            save(self.data, self.args.output, self.own)
        if self.args.selection_only:
            return
        for seed in self.args.seeds:
            self.run("records", task, method, seed, lr)


def validation_score(records: list[dict]) -> float:
    """Mean validation Dice over the selection seeds; a diverged run (non-finite Dice) disqualifies its rate."""
    dice = [r["val_dice"] for r in records]
    return float(np.mean(dice)) if all(math.isfinite(d) for d in dice) else -math.inf


def protocol_of(args: argparse.Namespace, tasks: list[dict]) -> dict:
    return {
        "base_model": portable(args.base_model),
        "max_train_steps": args.max_train_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
        "validation_fraction": VALIDATION_FRACTION,
        "validation_seed": VALIDATION_SEED,
        "selection_seeds": args.selection_seeds,
        "selection_metric": "val_dice",
        "lr_grid": {m: list(args.lr_grid or DEFAULT_LR_GRID[RUN_METHOD[m]]) for m in args.methods if m != "zeroshot"},
        "seeds": args.seeds,
        "methods": args.methods,
        "icmoe_variants": {m: ICMOE_VARIANTS[m] for m in args.methods if m in ICMOE_VARIANTS},
        "tasks": {t["name"]: t for t in tasks},
    }


def run_benchmark(args: argparse.Namespace) -> dict:
    tasks = load_tasks(args.tasks)
    protocol = protocol_of(args, tasks)
    data = {"protocol": {}, "selection": [], "records": []}
    if args.output.is_file() and not args.fresh:
        data = json.loads(args.output.read_text())
        old = data["protocol"]
        changed = [k for k in SHARED_SETTINGS if k in old and old[k] != protocol[k]]
        if changed and (data["records"] or data["selection"]):
            was = ", ".join(f"{k}={old[k]}" for k in changed)
            raise SystemExit(f"{args.output} was made with other settings ({was}); pass --fresh to start over, "
                             "or another --output.")
        protocol["tasks"] = {**old.get("tasks", {}), **protocol["tasks"]}
        protocol["icmoe_variants"] = {**old.get("icmoe_variants", {}), **protocol["icmoe_variants"]}
        protocol["lr_grid"] = {**old.get("lr_grid", {}), **protocol["lr_grid"]}
    protocol["commands"] = list(dict.fromkeys(data["protocol"].get("commands", []) + [args.command]))
    protocol["machine"] = machine()
    protocol["matched_ranks"] = matched_ranks(args.base_model, data["protocol"].get("matched_ranks"))
    data["protocol"] = protocol
    save(data, args.output, {(task["name"], method) for task in tasks for method in args.methods})

    bench = Benchmark(args, data)
    for task in tasks:
        for method in args.methods:
            bench.task_method(task, method)
    data["invocation"] = {"command": args.command, "runs_executed": bench.executed, "runs_reused": bench.reused}
    save(data, args.output, bench.own)
    print(f"[accuracy] runs executed: {bench.executed}, reused: {bench.reused}; results in {args.output}", flush=True)
    return data


# ------------------------------------------------------------------------------------------------------- report
def _summary(values: list[float], digits: int) -> str:
    """Mean ± sample std over seeds; the mean alone for one seed or non-finite values (inf HD95 shows as inf)."""
    if len(values) == 1 or not all(math.isfinite(v) for v in values):
        return f"{np.mean(values):.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _ordered(records: list[dict], key: str, order: tuple[str, ...]) -> list[str]:
    seen = list(dict.fromkeys(r[key] for r in records))
    return sorted(seen, key=lambda v: (order.index(v) if v in order else len(order), seen.index(v)))


def _results_table(data: dict, methods: tuple[str, ...]) -> list[str]:
    records = [r for r in data["records"] if r["method"] in methods]
    if not records:
        return []
    rows = ["| task | method | n seeds | lr | Dice | IoU | HD95 (px) | trainable params (of which encoder) |",
            "|---|---|---|---|---|---|---|---|"]
    for task in _ordered(records, "dataset", tuple(data["protocol"].get("tasks", {}))):
        of_task = [r for r in records if r["dataset"] == task]
        label = f"{task} (simulated)" if of_task[0].get("simulated") else task
        for method in _ordered(of_task, "method", methods):
            group = sorted((r for r in of_task if r["method"] == method), key=lambda r: r["seed"])
            lr = group[0]["learning_rate"]
            rows.append(
                f"| {label} | {method} | {len(group)} | {'–' if lr is None else f'{lr:g}'} "
                f"| {_summary([r['dice'] for r in group], 3)} | {_summary([r['iou'] for r in group], 3)} "
                f"| {_summary([r['hd95'] for r in group], 2)} "
                f"| {group[0]['trainable_params']:,} ({group[0]['trainable_encoder_params']:,}) |"
            )
    return rows


def _selection_table(data: dict) -> list[str]:
    selection = data["selection"]
    if not selection:
        return []
    rows = ["| task | method | validation Dice per learning rate, mean over selection seeds (chosen in bold) |",
            "|---|---|---|"]
    order = MAIN_METHODS + ABLATIONS + tuple(ICMOE_CANDIDATES)
    for task in _ordered(selection, "dataset", tuple(data["protocol"].get("tasks", {}))):
        of_task = [r for r in selection if r["dataset"] == task]
        for method in _ordered(of_task, "method", order):
            of_method = [r for r in of_task if r["method"] == method]
            cells = []
            for lr in sorted({r["learning_rate"] for r in of_method}):
                group = [r for r in of_method if r["learning_rate"] == lr]
                cell = f"{lr:g}: {_summary([r['val_dice'] for r in group], 3)}"
                cells.append(f"**{cell}**" if group[0].get("chosen") else cell)
            rows.append(f"| {task} | {method} | {', '.join(cells)} |")
    return rows


def _rates_tried(data: dict) -> dict[str, dict[str, list[float]]]:
    """Per task and method, the learning rates its records used (the grid when selected, else the one rate): read
    from the records themselves, since processes that share a results file may have run different grids."""
    tried: dict[str, dict[str, set]] = {}
    for record in data["selection"] + data["records"]:
        if record["learning_rate"] is not None:
            tried.setdefault(record["dataset"], {}).setdefault(record["method"], set()).add(record["learning_rate"])
    order = MAIN_METHODS + ABLATIONS + tuple(ICMOE_CANDIDATES)
    rank = {method: index for index, method in enumerate(order)}
    return {task: {m: sorted(by_method[m]) for m in sorted(by_method, key=lambda m: rank.get(m, len(order)))}
            for task, by_method in tried.items()}


def best_mean_learning_rates(data: dict) -> dict[str, tuple[float, float, list[str]]]:
    """Per method: the learning rate with the best validation Dice averaged over the tasks (and selection seeds) that
    ran it, with that mean and the tasks. For the main methods, what `training/methods.py` takes as their defaults;
    for IC-MoE variants, how candidate defaults compare without the test split."""
    best = {}
    for method in _ordered(data["selection"], "method", MAIN_METHODS + ABLATIONS + tuple(ICMOE_CANDIDATES)):
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


def plot_dice(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = data["records"]
    tasks = _ordered(records, "dataset", tuple(data["protocol"].get("tasks", {})))
    width = max(5.0, 0.7 * len({r["method"] for r in records}))
    fig, axes = plt.subplots(1, len(tasks), figsize=(width * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        of_task = [r for r in records if r["dataset"] == task]
        methods = _ordered(of_task, "method", MAIN_METHODS + ABLATIONS)
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


def render_section(data: dict, figure: str | None) -> str:
    protocol = data["protocol"]
    lines = [MARK_BEGIN, "## Accuracy", "",
             "Generated by `benchmarks/accuracy.py` from its results file; edit outside the accuracy markers only.", ""]
    main = _results_table(data, MAIN_METHODS)
    if main:
        lines += ["Test-split metrics, mean ± std over seeds (std when n > 1); lr chosen on the validation split.", ""]
        lines += main + [""]
    ablations = _results_table(data, ("icmoe",) + ABLATIONS)
    if any(r["method"] in ABLATIONS for r in data["records"]):
        lines += ["### IC-MoE ablations", "", "Overrides of the default IC-MoE adapter config:", ""]
        lines += [f"- `{m}`: `{json.dumps(o)}`" for m, o in protocol.get("icmoe_variants", {}).items() if m != "icmoe"]
        lines += [""] + ablations + [""]
    if figure:
        lines += [f"![Test Dice per method and task; dots are seeds]({figure})", ""]
    if protocol.get("matched_ranks"):
        m = protocol["matched_ranks"]
        lines += ["### Parameter-matched baselines", "",
                  f"Trainable encoder parameters (under `vision_encoder`): IC-MoE (default config) "
                  f"{m['icmoe_encoder_params']:,}; `lora_matched` rank {m['lora_rank']} "
                  f"({m['lora_encoder_params']:,}); `adapter_matched` rank {m['adapter_rank']} "
                  f"({m['adapter_encoder_params']:,}); tolerance {m['tolerance']:.0%}.", ""]
    selection = _selection_table(data)
    if selection:
        lines += ["### Learning-rate selection", ""] + selection + [""]
        lines += ["Best learning rate per method by validation Dice averaged over the tasks (the defaults of "
                  "`training/run.py` for the main methods come from here):", ""]
        lines += [f"- `{m}`: {lr:g} (mean validation Dice {mean:.3f} over {', '.join(tasks)})"
                  for m, (lr, mean, tasks) in best_mean_learning_rates(data).items()] + [""]
    lines += ["### Protocol", ""]
    keys = SHARED_SETTINGS + ("selection_metric",)
    lines += [f"- {key}: `{json.dumps(protocol[key])}`" for key in keys if key in protocol]
    lines += [f"- learning rates tried, {task}: " + "; ".join(f"`{m}` {', '.join(f'{lr:g}' for lr in lrs)}"
                                                      for m, lrs in grids.items())
              for task, grids in _rates_tried(data).items()]
    tasks = protocol.get("tasks", {})
    lines += [f"- task `{name}`: {t.get('modality', '')}, {t['prompt']} prompts"
              f"{', simulated' if t.get('simulated') else ''} (`{t['path']}`)" for name, t in tasks.items()]
    machines = sorted({r["machine"] for r in data["records"] + data["selection"] if "machine" in r})
    lines += [f"- machine: {name}" for name in machines]
    lines += ["", "### Reproduce", "", "```bash"] + protocol.get("commands", [])
    if protocol.get("commands"):
        lines += [f"{protocol['commands'][-1]} --report   # re-render this section from the results file"]
    lines += ["```", MARK_END]
    return "\n".join(lines) + "\n"


def write_report(data: dict, report_path: Path) -> None:
    figure = None
    if data["records"]:
        figure_path = report_path.parent / "figures" / "accuracy.png"
        plot_dice(data, figure_path)
        figure = os.path.relpath(figure_path, report_path.parent)
    section = render_section(data, figure)
    write_section(report_path, section, MARK_BEGIN, MARK_END)
    print(f"[accuracy] report in {report_path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        if not args.output.is_file():
            raise SystemExit(f"No results file {args.output}: run the benchmark first (or pass --output).")
        data = json.loads(args.output.read_text())
    else:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(args.num_threads or threads)
        try:
            data = run_benchmark(args)
        finally:
            torch.set_num_threads(threads)  # `main` may be called in-process (tests): leave no global change
    write_report(data, args.report_path)


if __name__ == "__main__":
    main()
