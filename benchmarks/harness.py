"""The accuracy benchmarks' shared harness: one run of a training entry, records saved after every run and reused on
a restart, the learning rate chosen by validation Dice, and the command line (the tasks and their splits are in
`benchmarks/splits.py`).

A benchmark is a `Benchmark` subclass that says which tasks file and methods it has, each method's learning-rate
grid, what one run executes and what its record holds: `benchmarks/accuracy.py` (prompted, one object per row) and
`benchmarks/semantic_accuracy.py` (prompt-free, every class on every image).

Per (task, method) the learning rate is chosen from the method's grid by validation Dice averaged over the selection
seeds; then each seed trains on the whole train split at that rate and is scored on the test split. The validation
split is the task's own when its folder has one (`split` column `validation` in `metadata.csv`), else a fixed 20 % of
the train split's rows, whole images only (`grouped_validation_split`, seed 0). The test split is never looked at
before the rate is chosen; with `--test_set fresh` the runs are scored on the task's fresh test set, once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.accuracy_methods import count_encoder_params, matched_ranks
from benchmarks.splits import (  # noqa: F401  (the benchmarks and their tests read these here too)
    FRESH_TEST_DIR,
    VALIDATION_FRACTION,
    VALIDATION_SEED,
    SelectionSplit,
    fresh_test_dataset,
    fresh_test_folder,
    grouped_validation_split,
    load_tasks,
    own_splits,
    portable,
    save_dataset_dict,
    selection_split,
    task_fingerprint,
    validation_dataset,
)
from modeling_icmoe.run_folder import EVAL_RESULTS_NAME, TRAIN_LOG_NAME
from training.arguments import DEFAULT_BASE_MODEL

REPO_ROOT = Path(__file__).resolve().parents[1]

KEEP_OUTPUTS = (EVAL_RESULTS_NAME, TRAIN_LOG_NAME)
METRICS = ("dice", "dice_std", "iou", "iou_std", "hd95", "hd95_std", "n_images")
# Protocol entries that processes sharing one results file each add to (`save`).
MERGED_PROTOCOL_KEYS = ("tasks", "icmoe_variants", "lr_grid", "trainable_encoder_params", "semantic_methods",
                        "baseline_candidates")


# ------------------------------------------------------------------------------------------------------ running

def run_training(argv: list[str]) -> dict:
    """`training/run.py` with `argv`, in this process."""
    from training.arguments import parse_args as parse_run_args
    from training.loop import run

    return run(parse_run_args(argv))


def train_and_score(argv: list[str], output_dir: Path, *, entry: Callable[[list[str]], dict] = run_training,
                    keep: tuple[str, ...] = KEEP_OUTPUTS) -> dict:
    """One run of a training entry (default: the training code's) into `output_dir`; keeps only the files in `keep`."""
    shutil.rmtree(output_dir, ignore_errors=True)  # a run interrupted earlier left a partial folder
    results = entry(argv + ["--output_dir", str(output_dir)])
    for entry_path in output_dir.iterdir():
        if entry_path.name not in keep:
            shutil.rmtree(entry_path) if entry_path.is_dir() else entry_path.unlink()
    return results


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return f"{device}; {platform.platform()}; Python {platform.python_version()}; torch {torch.__version__}"


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
                if key in on_disk["protocol"] or key in data["protocol"]:
                    data["protocol"][key] = {**on_disk["protocol"].get(key, {}), **data["protocol"].get(key, {})}
            commands = on_disk["protocol"].get("commands", []) + data["protocol"].get("commands", [])
            data["protocol"]["commands"] = list(dict.fromkeys(commands))
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(partial, path)  # atomic: a stop mid-write keeps the previous file


def validation_score(records: list[dict]) -> float:
    """Mean validation Dice over the selection seeds; a diverged run (non-finite Dice) disqualifies its rate."""
    dice = [r["val_dice"] for r in records]
    return float(np.mean(dice)) if all(math.isfinite(d) for d in dice) else -math.inf


def best_recorded_rates(paths: list[Path], task: str, methods: list[str], top: int) -> tuple[float, ...]:
    """The `top` learning rates with the best mean validation Dice on `task` in the results files `paths` (their
    selection runs), best first, of the first of `methods` that they record; refused by name where none is."""
    selection = [record for path in paths for record in json.loads(Path(path).read_text()).get("selection", [])]
    for method in methods:
        runs: dict[float, list[dict]] = {}
        for record in selection:
            if record["dataset"] == task and record["method"] == method:
                runs.setdefault(record["learning_rate"], []).append(record)
        if runs:
            seeds = {lr: sorted(r["seed"] for r in group) for lr, group in runs.items()}
            if len({tuple(s) for s in seeds.values()}) > 1:
                raise SystemExit(f"--lr_grid_from: {method} on {task} has other seeds at different rates ({seeds}); "
                                 "rates are compared on the same seeds")
            return tuple(sorted(runs, key=lambda lr: validation_score(runs[lr]), reverse=True)[:top])
    raise SystemExit(f"--lr_grid_from: {', '.join(map(str, paths))} record no validation runs of "
                     f"{' or '.join(dict.fromkeys(methods))} on {task}")


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


class Benchmark:
    """The loop over (task, method): selection runs, then seeded final runs, saving after each run.

    Subclasses fill in the class attributes and the hooks `lr_grid`, `method_spec`, `settings`, `execute` and
    `make_record` (and, where they differ, `trains`, `protocol_extra` and `write_report`)."""

    name: str  # the default results file's stem and the printed tag
    script: str  # how the benchmark is started, for the recorded commands
    description: str
    tasks_file: Path
    fallback_tasks: list[dict] | None = None
    methods: tuple[str, ...]  # the choices of --methods
    methods_help: str
    defaults: dict  # what an unset option means (`lr_grid` None = the method's own grid)
    smoke: dict  # the same for --smoke
    default_output: Path
    # Settings every record of one results file shares; a resume with other values must start a new file.
    shared_settings: tuple[str, ...] = (
        "base_model", "max_train_steps", "per_device_train_batch_size", "max_train_samples", "max_eval_samples",
        "validation_fraction", "validation_seed", "selection_seeds", "test_set")

    def __init__(self, args: argparse.Namespace, data: dict):
        self.args, self.data = args, data
        self.work = Path(args.work_dir).resolve()
        self.executed = self.reused = 0
        self.selection_splits: dict[str, SelectionSplit] = {}
        self.fresh_tests: dict[str, tuple[Path, str]] = {}
        self.own = {(task["name"], method) for task in self.load_tasks(args.tasks) for method in args.methods}

    # ------------------------------------------------------------------------------------------------- hooks
    @classmethod
    def load_tasks(cls, names: list[str] | None) -> list[dict]:
        return load_tasks(names, cls.tasks_file, cls.fallback_tasks)

    @classmethod
    def trains(cls, method: str) -> bool:
        """False for a method that is scored without training (no learning rate to choose)."""
        return True

    @classmethod
    def lr_grid(cls, args: argparse.Namespace, method: str) -> tuple[float, ...]:
        raise NotImplementedError

    @classmethod
    def protocol_extra(cls, args: argparse.Namespace) -> dict:
        """Protocol entries of this benchmark alone (placed before `tasks`)."""
        return {}

    @classmethod
    def write_report(cls, data: dict, report_path: Path, name: str) -> None:
        raise NotImplementedError

    def method_spec(self, method: str) -> tuple[str | None, list[str], object | None, dict]:
        """(run.py --method or None for a model outside run.py, run.py arguments, IC-MoE config, what to record)."""
        raise NotImplementedError

    def settings(self, kind: str, task: dict, method: str, seed: int, lr: float | None) -> dict:
        """What makes a run: a recorded run with equal settings is reused."""
        raise NotImplementedError

    def execute(self, kind: str, task: dict, method: str, seed: int, lr: float | None, folder: Path) -> dict:
        """Trains and scores one run into `folder`; returns its results."""
        raise NotImplementedError

    def make_record(self, kind: str, task: dict, method: str, seed: int, lr: float | None, results: dict,
                    settings: dict) -> dict:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- shared
    def selection_split(self, task: dict) -> SelectionSplit:
        if task["name"] not in self.selection_splits:
            self.selection_splits[task["name"]] = selection_split(task, self.work / "splits")
        return self.selection_splits[task["name"]]

    def fresh_test(self, task: dict) -> tuple[Path, str]:
        """(dataset, id) of the task's train split with its fresh test set, built once per task and process."""
        if task["name"] not in self.fresh_tests:
            self.fresh_tests[task["name"]] = fresh_test_dataset(task, self.work / "splits")
        return self.fresh_tests[task["name"]]

    def sample_args(self, steps: int | None = None) -> list[str]:
        """The steps (default --max_train_steps), batch size and sample limits every method gets."""
        args = self.args
        argv = ["--max_train_steps", str(steps or args.max_train_steps),
                "--per_device_train_batch_size", str(args.per_device_train_batch_size)]
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(args, name) is not None:
                argv += [f"--{name}", str(getattr(args, name))]
        return argv

    def eval_data(self, kind: str, task: dict) -> tuple[Path, str]:
        """(dataset, eval split) of a run: the selection split's validation, or the test split (the task's own, or
        with `--test_set fresh` its fresh test set)."""
        if kind == "selection":
            return self.selection_split(task).dataset, "validation"
        if self.args.test_set == "fresh":
            return self.fresh_test(task)[0], "test"
        return REPO_ROOT / task["path"], "test"

    def split_settings(self, kind: str, task: dict) -> dict:
        """What a run's settings say about where it trains and is scored."""
        if kind == "selection":
            split = self.selection_split(task)
            return {"split": split.description, "validation_split": split.split_id}
        if self.args.test_set == "fresh":
            return {"split": "train -> fresh test", "test_split": self.fresh_test(task)[1]}
        return {"split": "train -> test"}

    def run_training_code(self, task: dict, method: str, seed: int, lr: float | None, *, run_args: list[str],
                          config, dataset: Path, eval_split: str, folder: Path) -> dict:
        """One run of `training/run.py` with `run_args`, the IC-MoE `config` (if any) written to a preset."""
        argv = ["--base_model", self.args.base_model, *run_args, "--seed", str(seed),
                "--dataset", str(dataset), "--eval_split", eval_split]
        if lr is not None:
            argv += ["--learning_rate", repr(lr), "--no_zeroshot_eval"]
        if config is not None:
            preset = self.work / "presets" / task["name"] / f"{method}.json"  # one writer per task and file
            preset.parent.mkdir(parents=True, exist_ok=True)
            config.to_json_file(preset)
            argv += ["--icmoe_config", str(preset)]
        if self.args.dataloader_num_workers is not None:
            argv += ["--dataloader_num_workers", str(self.args.dataloader_num_workers)]
        return train_and_score(argv, folder)

    def base_record(self, kind: str, task: dict, method: str, seed: int, lr: float | None, results: dict) -> dict:
        """The fields every benchmark's record has: what ran, its metrics (`val_` in selection runs), its cost."""
        prefix = "val_" if kind == "selection" else ""
        return {
            "dataset": task["name"], "method": method, "seed": seed, "learning_rate": lr,
            "modality": task.get("modality"), "prompt": task["prompt"], "simulated": bool(task.get("simulated")),
            **{prefix + key: results[key] for key in METRICS},
            "trainable_params": results["trainable_params"],
            "trainable_encoder_params": self.encoder_params(method),
            "train_steps": results["train_steps"], "train_seconds": results["train_seconds"],
        }

    def run(self, kind: str, task: dict, method: str, seed: int, lr: float | None) -> dict:
        """The record of one run: reused when one with identical settings exists, else trained and saved."""
        settings = self.settings(kind, task, method, seed, lr)
        table = self.data[kind]
        if kind == "records" and self.args.test_set == "fresh":
            unseeded = {k: v for k, v in settings.items() if k != "seed"}
            earlier = [r for r in table if (r["dataset"], r["method"]) == (task["name"], method)
                       and {k: v for k, v in r["settings"].items() if k != "seed"} != unseeded]
            if earlier:  # a second look would let the fresh test set steer a choice
                raise SystemExit(f"--test_set fresh: {task['name']} / {method} was already scored on the fresh test "
                                 f"set with other settings (seed {earlier[0]['seed']}); it is scored once, after every "
                                 "choice is frozen. A changed method needs a test set no choice has seen.")
        for record in table:
            if record["settings"] == settings:
                self.reused += 1
                return record
        name = f"select_lr{lr:g}_seed{seed}" if kind == "selection" else f"seed{seed}"
        print(f"[{self.name}] {kind}: {task['name']} / {method} / seed {seed} / lr {lr}", flush=True)
        results = self.execute(kind, task, method, seed, lr, self.work / "runs" / task["name"] / method / name)
        self.executed += 1
        record = self.make_record(kind, task, method, seed, lr, results, settings)
        same_slot = ("dataset", "method", "seed") + (("learning_rate",) if kind == "selection" else ())
        table[:] = [r for r in table if any(r[k] != record[k] for k in same_slot)] + [record]
        save(self.data, self.args.output, self.own)
        return record

    def encoder_params(self, method: str) -> int | None:
        """Trainable parameters under SAM's vision encoder (None for a model that is not SAM), counted once per
        built model and kept in the protocol."""
        run_method, _, config, info = self.method_spec(method)
        if run_method is None:
            return None
        ranks = {k: v for k, v in info.items() if k.endswith("_rank")}
        options = {k: v for k, v in info.get("baseline_options", {}).items() if k != "layer_lr_decay"}
        # Keyed by what is built, not by the method's name: a method keeps its name when the default config changes.
        key = json.dumps([run_method, config.to_dict() if config else None, ranks, *([options] if options else [])],
                         sort_keys=True)
        cache = self.data["protocol"].setdefault("trainable_encoder_params", {})
        if key not in cache:
            cache[key] = count_encoder_params(run_method, self.args.base_model, icmoe_config=config, **ranks,
                                              baseline=options)
        return cache[key]

    @classmethod
    def reference_method(cls, method: str) -> str:
        """The method whose recorded rates `--lr_grid_from` reads for `method` (a candidate's reference)."""
        return method

    @classmethod
    def task_lr_grid(cls, args: argparse.Namespace, task: dict, method: str) -> tuple[float, ...]:
        """The rates tried for `method` on `task`: with `--lr_grid_from`, the `--lr_grid_top` best on that task in the
        other results files (by mean validation Dice over their selection seeds) of the method itself, or where they
        do not record it, of its reference method; else the method's grid."""
        if args.lr_grid_from is None:
            return cls.lr_grid(args, method)
        return best_recorded_rates(args.lr_grid_from, task["name"], [method, cls.reference_method(method)],
                                   args.lr_grid_top)

    def task_method(self, task: dict, method: str) -> None:
        lr = None
        grid = self.task_lr_grid(self.args, task, method) if self.trains(method) else ()
        if self.trains(method) and len(grid) == 1:  # nothing to choose: no validation runs
            lr = grid[0]
            self.drop_records_at_other_rates(task, method, lr)
        elif self.trains(method):
            seeds = self.args.selection_seeds
            runs = {value: [self.run("selection", task, method, seed, value) for seed in seeds] for value in grid}
            self.data["selection"][:] = [r for r in self.data["selection"] if (r["dataset"], r["method"]) !=
                                         (task["name"], method) or (r["learning_rate"] in runs and r["seed"] in seeds)]
            lr = max(grid, key=lambda value: validation_score(runs[value]))
            for value, records in runs.items():
                for record in records:
                    record["chosen"] = value == lr
            self.drop_records_at_other_rates(task, method, lr)
            save(self.data, self.args.output, self.own)
        if self.args.selection_only:
            return
        for seed in self.args.seeds:
            self.run("records", task, method, seed, lr)

    def drop_records_at_other_rates(self, task: dict, method: str, lr: float) -> None:
        """Seeds run earlier at another rate were tuned under another grid: they no longer belong. Not on the fresh
        test set, where such a record is a look already taken (`run` refuses to replace it)."""
        if self.args.test_set != "fresh":
            self.data["records"][:] = [r for r in self.data["records"] if (r["dataset"], r["method"]) !=
                                       (task["name"], method) or r["learning_rate"] == lr]

    @classmethod
    def protocol_of(cls, args: argparse.Namespace, tasks: list[dict]) -> dict:
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
            "test_set": args.test_set,
            "lr_grid": {m: ({t["name"]: list(cls.task_lr_grid(args, t, m)) for t in tasks} if args.lr_grid_from
                            else list(cls.lr_grid(args, m))) for m in args.methods if cls.trains(m)},
            **({"lr_grid_from": {"files": [portable(p) for p in args.lr_grid_from], "top": args.lr_grid_top}}
               if args.lr_grid_from else {}),
            "seeds": args.seeds,
            "methods": args.methods,
            **cls.protocol_extra(args),
            "tasks": {t["name"]: t for t in tasks},
        }


def run_benchmark(args: argparse.Namespace, benchmark: type[Benchmark]) -> dict:
    tasks = benchmark.load_tasks(args.tasks)
    protocol = benchmark.protocol_of(args, tasks)
    data = {"protocol": {}, "selection": [], "records": []}
    if args.fresh and args.output.is_file() and json.loads(args.output.read_text()).get(
            "protocol", {}).get("test_set") == "fresh":
        raise SystemExit(f"--fresh would discard {args.output}, the record of a fresh test set's one use; move it "
                         "aside by hand if that is really meant.")
    if args.output.is_file() and not args.fresh:
        data = json.loads(args.output.read_text())
        old = data["protocol"]
        changed = [k for k in benchmark.shared_settings if k in old and old[k] != protocol[k]]
        if changed and (data["records"] or data["selection"]):
            was = ", ".join(f"{k}={old[k]}" for k in changed)
            raise SystemExit(f"{args.output} was made with other settings ({was}); pass --fresh to start over, "
                             "or another --output.")
        for key in MERGED_PROTOCOL_KEYS:
            if key in protocol:
                merged = {**old.get(key, {}), **protocol[key]}
                if key == "lr_grid":  # per-task grids (--lr_grid_from) of runs split over --tasks add up
                    merged.update({m: {**old[key][m], **grid} for m, grid in protocol[key].items()
                                   if isinstance(grid, dict) and isinstance(old.get(key, {}).get(m), dict)})
                protocol[key] = merged
    protocol["commands"] = list(dict.fromkeys(data["protocol"].get("commands", []) + [args.command]))
    protocol["machine"] = machine()
    recorded = data["protocol"].get("matched_ranks")
    if args.matched_ranks_from is not None:
        if recorded is None:
            recorded = recorded_matched_ranks(args.matched_ranks_from)
        else:
            print(f"[{benchmark.name}] --matched_ranks_from ignored: {args.output} already records its matched ranks",
                  flush=True)
    protocol["matched_ranks"] = matched_ranks(args.base_model, recorded)
    data["protocol"] = protocol
    save(data, args.output, {(task["name"], method) for task in tasks for method in args.methods})

    bench = benchmark(args, data)
    for task in tasks:
        for method in args.methods:
            bench.task_method(task, method)
    data["invocation"] = {"command": args.command, "runs_executed": bench.executed, "runs_reused": bench.reused}
    save(data, args.output, bench.own)
    print(f"[{benchmark.name}] runs executed: {bench.executed}, reused: {bench.reused}; results in {args.output}",
          flush=True)
    return data


# ------------------------------------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None, benchmark: type[Benchmark]) -> argparse.Namespace:
    defaults, smoke = benchmark.defaults, benchmark.smoke
    parser = argparse.ArgumentParser(description=benchmark.description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=None, help="Task names (default: every task).")
    parser.add_argument("--methods", nargs="+", default=None, choices=list(benchmark.methods), metavar="METHOD",
                        help=benchmark.methods_help)
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help=f"Training seeds (default {' '.join(map(str, defaults['seeds']))}).")
    parser.add_argument("--selection_seeds", nargs="+", type=int, default=None,
                        help="Training seeds of the learning-rate selection runs; the validation Dice is averaged "
                             f"over them (default {' '.join(map(str, defaults['selection_seeds']))}).")
    parser.add_argument("--selection_only", action="store_true",
                        help="Only the validation runs: choose each method's learning rate, train nothing on the "
                             "whole train split, never touch the test split.")
    parser.add_argument("--lr_grid", nargs="+", type=float, default=None,
                        help="One grid for every method (default: each method's own grid).")
    parser.add_argument("--test_set", choices=("task", "fresh"), default="task",
                        help="What the seeded runs are scored on: the task's own test split (default), or its fresh "
                             "test set (benchmarks/tasks/fresh_test/), drawn with a seed never used and scored once "
                             "after every choice is frozen.")
    parser.add_argument("--lr_grid_from", type=Path, nargs="+", default=None,
                        help="Other results files: each (task, method) tries the --lr_grid_top rates that it (or, "
                             "where they do not record it, its reference method: a candidate's baseline) scored "
                             "best on that task's validation split there. With --lr_grid_top 1, no validation run.")
    parser.add_argument("--lr_grid_top", type=int, default=2, help="With --lr_grid_from: how many rates (default 2).")
    parser.add_argument("--max_train_steps", type=int, default=None,
                        help=f"Default {defaults['max_train_steps']}, equal for all methods.")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--dataloader_num_workers", type=int, default=None)
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--base_model", default=str(DEFAULT_BASE_MODEL))
    parser.add_argument("--output", default=None,
                        help=f"Default {portable(benchmark.default_output)} (--smoke: work dir).")
    parser.add_argument("--work_dir", default=str(REPO_ROOT / "benchmarks" / ".cache" / benchmark.name),
                        help="Validation splits, presets and run outputs.")
    parser.add_argument("--report_path", default=None, help="Default docs/BENCHMARKS.md (--smoke: work dir); the "
                        "section is named after --output's file.")
    parser.add_argument("--fresh", action="store_true", help="Discard the results file instead of resuming it.")
    parser.add_argument("--matched_ranks_from", type=Path, default=None,
                        help="Another results file whose matched LoRA and adapter ranks a new results file starts "
                        "with (kept while within the tolerance), so that its matched baselines are the same models.")
    parser.add_argument("--report", action="store_true", help="Only render the report from the results file.")
    parser.add_argument("--smoke", action="store_true", help="Tiny settings: " + json.dumps(smoke))
    args = parser.parse_args(argv)
    args.command = f"python {benchmark.script} " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.lr_grid_from is not None and args.lr_grid is not None:
        parser.error("--lr_grid and --lr_grid_from are two ways to give the rates: pass one")
    for key in defaults:
        if getattr(args, key) is None:
            setattr(args, key, (smoke if args.smoke else defaults)[key])
    # A smoke run writes into its work folder unless told otherwise: it must not overwrite the real results.
    work = Path(args.work_dir)
    args.output = Path(args.output or (work / f"{benchmark.name}.json" if args.smoke else benchmark.default_output))
    args.report_path = Path(args.report_path or (work / "BENCHMARKS.md" if args.smoke else
                                                 REPO_ROOT / "docs" / "BENCHMARKS.md"))
    for name in ("max_train_steps", "per_device_train_batch_size", "max_train_samples", "max_eval_samples"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    for path in args.lr_grid_from or []:
        if not path.is_file():
            parser.error(f"--lr_grid_from: no results file at {path}")
    if args.lr_grid_top <= 0:
        parser.error(f"--lr_grid_top must be positive, got {args.lr_grid_top}")
    if args.lr_grid is not None and any(lr <= 0 for lr in args.lr_grid):
        parser.error(f"--lr_grid values must be positive, got {args.lr_grid}")
    return args


def main(argv: list[str] | None, benchmark: type[Benchmark]) -> None:
    args = parse_args(argv, benchmark)
    if args.report:
        if not args.output.is_file():
            raise SystemExit(f"No results file {args.output}: run the benchmark first (or pass --output).")
        data = json.loads(args.output.read_text())
    else:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(args.num_threads or threads)
        try:
            data = run_benchmark(args, benchmark)
        finally:
            torch.set_num_threads(threads)  # `main` may be called in-process (tests): leave no global change
    benchmark.write_report(data, args.report_path, args.output.stem)
