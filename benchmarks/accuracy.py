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
(text outside the markers is kept), with its figure in `docs/figures/accuracy.png`. Another `--output` file gets
its own section and figure, named after the file (`<!-- accuracy_ten_seeds:begin -->`, `accuracy_ten_seeds.png`).
Test records carry every object's Dice (`per_image_dice`), from which the report compares IC-MoE with each other
method by a paired bootstrap over seeds and test objects.
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

from benchmarks.accuracy_methods import (  # noqa: E402, F401  (tests and callers read the tables here too)
    ABLATIONS,
    DEFAULT_LR_GRID,
    ICMOE_CANDIDATES,
    ICMOE_VARIANTS,
    MAIN_METHODS,
    ROUTED_EXPERT_FIELDS,
    RUN_METHOD,
    count_encoder_params,
    icmoe_variant_config,
    matched_ranks,
    method_run_args,
)
from benchmarks.accuracy_report import (  # noqa: E402, F401
    MARK_BEGIN,
    MARK_END,
    SHARED_SETTINGS,
    best_mean_learning_rates,
    markers,
    paired_comparisons,
    paired_difference,
    render_section,
    write_report,
)
from training.arguments import DEFAULT_BASE_MODEL  # noqa: E402

TASKS_FILE = REPO_ROOT / "benchmarks" / "tasks" / "tasks.json"
FALLBACK_TASKS = [
    {"name": "dsb2018_nuclei", "path": "training/data/dsb2018_nuclei", "modality": "fluorescence microscopy",
     "prompt": "box", "simulated": False, "description": "Embedded DSB2018 nuclei tiles (one nucleus per row)."}
]

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
KEEP_OUTPUTS = ("eval_results.json", "train_log.jsonl")
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "accuracy.json"
DEFAULT_REPORT = REPO_ROOT / "docs" / "BENCHMARKS.md"
METRICS = ("dice", "dice_std", "iou", "iou_std", "hd95", "hd95_std", "n_images")


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
    parser.add_argument("--report_path", default=None, help="Default docs/BENCHMARKS.md (--smoke: work dir); the "
                        "section is named after --output's file.")
    parser.add_argument("--fresh", action="store_true", help="Discard the results file instead of resuming it.")
    parser.add_argument("--matched_ranks_from", type=Path, default=None,
                        help="Another results file whose matched LoRA and adapter ranks a new results file starts "
                        "with (kept while within the tolerance), so that its matched baselines are the same models.")
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
        if kind == "records":  # per-object test Dice, in the split's order, for paired comparisons across methods
            record["per_image_dice"] = [round(value, 5) for value in results["per_image"]["dice"]]
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


def recorded_matched_ranks(path: Path) -> dict:
    """The matched ranks another results file records (`--matched_ranks_from`); a bad file is refused by name."""
    if not path.is_file():
        raise SystemExit(f"--matched_ranks_from: no results file at {path}")
    try:
        source = json.loads(path.read_text())
    except ValueError as error:
        raise SystemExit(f"--matched_ranks_from: {path} is not JSON ({error})") from None
    recorded = source.get("protocol", {}).get("matched_ranks") if isinstance(source, dict) else None
    if recorded is None:
        raise SystemExit(f"--matched_ranks_from: {path} records no matched ranks")
    return recorded


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
    recorded = data["protocol"].get("matched_ranks")
    if args.matched_ranks_from is not None:
        if recorded is None:
            recorded = recorded_matched_ranks(args.matched_ranks_from)
        else:
            print(f"[accuracy] --matched_ranks_from ignored: {args.output} already records its matched ranks", flush=True)
    protocol["matched_ranks"] = matched_ranks(args.base_model, recorded)
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
    write_report(data, args.report_path, args.output.stem)  # `accuracy` for the main file


if __name__ == "__main__":
    main()
