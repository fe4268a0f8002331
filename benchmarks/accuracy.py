"""Accuracy benchmark: test Dice, IoU and HD95 of every fine-tuning method on every task, seeded and tuned fairly.

What it measures: for each task of `benchmarks/tasks/tasks.json` and each method (zero-shot SAM, decoder-only,
LoRA, bottleneck adapter, full fine-tuning, IC-MoE, LoRA and adapter at IC-MoE's encoder budget, and IC-MoE
ablations), the test-split metrics of `training/run.py` over several training seeds.

How: every run calls the training code itself, `training.loop.run(training.arguments.parse_args(argv))`, in this
process. Methods are data: run.py arguments plus, for IC-MoE variants, field overrides of the default
`IcMoeAdapterConfig` written to a preset for `--icmoe_config`. Per (task, method) the learning rate is chosen
from a grid by Dice on the task's validation split, or where it has none (the tasks here) one carved from the train
split (a fixed 20 % of its rows, whole images only, seed 0; the test split is never looked at), averaged over the
selection seeds (default: training seed 0);
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
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.accuracy_methods import (  # noqa: E402, F401  (tests and callers read the tables here too)
    ABLATIONS,
    BASELINE_CANDIDATES,
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
from benchmarks.harness import (  # noqa: E402, F401
    VALIDATION_FRACTION,
    VALIDATION_SEED,
    grouped_validation_split,
    machine,
    portable,
    save,
    task_fingerprint,
    train_and_score,
)
from training.arguments import DEFAULT_BASE_MODEL  # noqa: E402, F401

TASKS_FILE = REPO_ROOT / "benchmarks" / "tasks" / "tasks.json"
FALLBACK_TASKS = [
    {"name": "dsb2018_nuclei", "path": "training/data/dsb2018_nuclei", "modality": "fluorescence microscopy",
     "prompt": "box", "simulated": False, "description": "Embedded DSB2018 nuclei tiles (one nucleus per row)."}
]

# What an unset option means, for the benchmark (`DEFAULTS`) and for `--smoke` (`SMOKE`); `lr_grid` None = the table.
DEFAULTS = {"tasks": None, "methods": list(MAIN_METHODS), "seeds": [0, 1, 2], "selection_seeds": [0], "lr_grid": None,
            "max_train_steps": 300,
            "max_train_samples": None, "max_eval_samples": None, "dataloader_num_workers": None, "num_threads": None}
# One thread in the smoke run: its models are tiny, and idle OpenMP threads spinning on a busy CPU cost 2-3x the time.
SMOKE = {"tasks": ["dsb2018_nuclei"], "methods": ["zeroshot", "adapter", "icmoe"], "seeds": [0], "selection_seeds": [0],
         "lr_grid": [1e-3, 3e-3], "max_train_steps": 2, "max_train_samples": 8, "max_eval_samples": 4,
         "dataloader_num_workers": 0, "num_threads": 1}
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "accuracy.json"
DEFAULT_REPORT = REPO_ROOT / "docs" / "BENCHMARKS.md"


class AccuracyBenchmark(harness.Benchmark):
    """Prompted runs of `training/run.py`, one object per row, scored with the task's prompt."""

    name = "accuracy"
    script = "benchmarks/accuracy.py"
    description = __doc__
    tasks_file = TASKS_FILE
    fallback_tasks = FALLBACK_TASKS
    methods = tuple(RUN_METHOD)
    methods_help = (f"Default: {' '.join(MAIN_METHODS)}. Ablations: {' '.join(ABLATIONS)}. "
                    f"Candidate defaults: {' '.join(ICMOE_CANDIDATES)}. Baseline candidates (run with "
                    f"--lr_grid_from): {' '.join(BASELINE_CANDIDATES)}.")
    defaults, smoke, default_output = DEFAULTS, SMOKE, DEFAULT_OUTPUT
    shared_settings = SHARED_SETTINGS

    @classmethod
    def trains(cls, method: str) -> bool:
        return method != "zeroshot"

    @classmethod
    def lr_grid(cls, args: argparse.Namespace, method: str) -> tuple[float, ...]:
        return tuple(args.lr_grid or DEFAULT_LR_GRID.get(RUN_METHOD[method], ()))

    @classmethod
    def reference_method(cls, method: str) -> str:
        return BASELINE_CANDIDATES.get(method, (method, None))[0]

    @classmethod
    def protocol_extra(cls, args: argparse.Namespace) -> dict:
        return {"icmoe_variants": {m: ICMOE_VARIANTS[m] for m in args.methods if m in ICMOE_VARIANTS},
                **({"baseline_candidates": {m: BASELINE_CANDIDATES[m] for m in args.methods
                                            if m in BASELINE_CANDIDATES}}
                   if any(m in BASELINE_CANDIDATES for m in args.methods) else {})}

    @classmethod
    def write_report(cls, data: dict, report_path: Path, name: str) -> None:
        write_report(data, report_path, name)

    def method_spec(self, method: str) -> tuple[str, list[str], object | None, dict]:
        return (RUN_METHOD[method], *method_run_args(method, self.data["protocol"]["matched_ranks"]))

    def common_args(self, task: dict) -> list[str]:
        return ["--prompt", task["prompt"], "--num_example_figures", "0", *self.sample_args()]

    def settings(self, kind: str, task: dict, method: str, seed: int, lr: float | None) -> dict:
        _, run_method_args, config, _ = self.method_spec(method)
        settings = {
            "task": task["name"], "task_fingerprint": task_fingerprint(task),
            "method": method, "seed": seed, "learning_rate": lr, "base_model": portable(self.args.base_model),
            "run_args": self.common_args(task) + run_method_args,
            "icmoe_config": config.to_dict() if config else None,
        }
        return {**settings, **self.split_settings(kind, task)}

    def execute(self, kind: str, task: dict, method: str, seed: int, lr: float | None, folder: Path) -> dict:
        _, run_method_args, config, _ = self.method_spec(method)
        dataset, eval_split = self.eval_data(kind, task)
        return self.run_training_code(task, method, seed, lr, run_args=self.common_args(task) + run_method_args,
                                      config=config, dataset=dataset, eval_split=eval_split, folder=folder)

    def make_record(self, kind: str, task: dict, method: str, seed: int, lr: float | None, results: dict,
                    settings: dict) -> dict:
        _, _, _, info = self.method_spec(method)
        record = {**self.base_record(kind, task, method, seed, lr, results),
                  "run_method": RUN_METHOD[method], **info, "machine": machine(), "settings": settings}
        if kind == "records":  # per-object test Dice, in the split's order, for paired comparisons across methods
            record["per_image_dice"] = [round(value, 5) for value in results["per_image"]["dice"]]
        if "diagnostics" in results:
            record["diagnostics"] = results["diagnostics"]
        return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return harness.parse_args(argv, AccuracyBenchmark)


def main(argv: list[str] | None = None) -> None:
    harness.main(argv, AccuracyBenchmark)


if __name__ == "__main__":
    main()
