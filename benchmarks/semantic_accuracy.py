"""Prompt-free accuracy benchmark: every class on every image, by IC-MoE, its baselines, a U-Net from scratch and the
prompted upper bound, seeded and tuned as the prompted benchmark is.

What it measures: for each task of `benchmarks/tasks/semantic_tasks.json` (class-id masks, `labels.json`) and each
method, the test split's Dice, IoU and HD95 averaged over classes (`training/semantic_metrics.py`, the rule of
docs/METRICS.md), per class, and per (image, class) pair, over several training seeds. The methods
(`semantic_methods.py`):

- `icmoe`, `icmoe_queries`: the prompt-free IC-MoE with the `mask_tokens` (default) or `queries` decoder; validation
  Dice decides which is the reference of the paired comparison (the report says which);
- `lora_matched` (LoRA on the encoder's qkv at IC-MoE's encoder parameter count, decoder trained: SAMed's recipe),
  `adapter`, `decoder`, `full`: run.py's baselines with the same prompt-free head (`mask_tokens`);
- `unet`: a 2-D U-Net from scratch (`unet_baseline.py`, nnU-Net's recipe) with the same steps and batch size, and
  `unet_own_budget`: the same with 4x the steps (`UNET_OWN_BUDGET_FACTOR`);
- `icmoe_prompted`: the prompted IC-MoE given one box per (image, class present), trained and scored on one row per
  such pair: an upper bound, counted per class over its prompted rows (no false positives on absent classes).

The protocol is the prompted benchmark's (`benchmarks/harness.py`): per (task, method) the learning rate is chosen
from the method's grid by validation Dice over classes averaged over the selection seeds, on the task's own
validation split (trained on `train`; the test split is not looked at), then each seed trains on `train` and is
scored on `test`. Every SAM method and the U-Net get the same steps and batch size. Records are saved after every
run and reused on a restart; test records carry every reference pair's Dice (`per_pair_dice`) for the paired
bootstrap of the report.

The full benchmark, as two processes of one thread each sharing the results file (each runs its own methods; the
U-Net at its own budget is about as long as all the rest):

    python benchmarks/semantic_accuracy.py --methods unet_own_budget --selection_seeds 0 1 \
        --num_threads 1 --dataloader_num_workers 0 &
    python benchmarks/semantic_accuracy.py --methods icmoe icmoe_queries lora_matched adapter decoder full unet \
        icmoe_prompted --selection_seeds 0 1 --num_threads 1 --dataloader_num_workers 0
    wait; python benchmarks/semantic_accuracy.py --report   # the section of docs/BENCHMARKS.md, from both

Measured on this project's 2-core CPU (one thread, batch 4, stand-in SAM; 100-step probe), seconds per training
step: decoder 0.046, adapter 0.076, lora_matched 0.077, icmoe 0.093, full 0.094, icmoe_prompted 0.094,
icmoe_queries 0.115, unet 0.265. At 600 steps with 3 rates x 2 selection seeds and 3 test seeds (9 runs per method,
evaluation included) that is about 1.4 h for the second process and 1.6 h for the first (U-Net, 2,400 steps a run):
3 h of CPU time, 1.6 h on two free cores.

    python benchmarks/semantic_accuracy.py --report         # re-render docs/BENCHMARKS.md from the JSON
    python benchmarks/semantic_accuracy.py --smoke --work_dir /tmp/sem   # tiny end-to-end check, under a minute

Writes `benchmarks/results/semantic_accuracy.json` and the section between the `semantic_accuracy` markers of
`docs/BENCHMARKS.md` (another `--output` file gets its own section, named after the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import harness, unet_baseline  # noqa: E402
from benchmarks.accuracy_methods import ICMOE_VARIANTS, RUN_METHOD, method_run_args  # noqa: E402
from benchmarks.semantic_methods import (  # noqa: E402
    PROMPTED_COUNTING,
    SEMANTIC_METHODS,
    UNET_OWN_BUDGET_FACTOR,
)
from benchmarks.semantic_pairs import (  # noqa: E402
    ROWS_FILE,
    class_means_of_rows,
    per_pair_dataset,
    reference_classes,
    reference_pair_dice,
    source_id,
)
from benchmarks.semantic_report import write_report  # noqa: E402
from training.semantic import class_names  # noqa: E402

TASKS_FILE = REPO_ROOT / "benchmarks" / "tasks" / "semantic_tasks.json"
DEFAULTS = {"tasks": None, "methods": list(SEMANTIC_METHODS), "seeds": [0, 1, 2], "selection_seeds": [0],
            "lr_grid": None, "max_train_steps": 600, "max_train_samples": None, "max_eval_samples": None,
            "dataloader_num_workers": None, "num_threads": None}
SMOKE = {"tasks": ["ct_abdomen_organs"], "methods": ["icmoe", "lora_matched", "unet", "icmoe_prompted"], "seeds": [0],
         "selection_seeds": [0], "lr_grid": [1e-3, 3e-3], "max_train_steps": 2, "max_train_samples": 8,
         "max_eval_samples": 4, "dataloader_num_workers": 0, "num_threads": 1}
UNET_KEEP = harness.KEEP_OUTPUTS + ("predictions.npz",)


class SemanticBenchmark(harness.Benchmark):
    """Prompt-free runs: `training/run.py --prompt none`, the U-Net baseline, and the prompted upper bound."""

    name = "semantic_accuracy"
    script = "benchmarks/semantic_accuracy.py"
    description = __doc__
    tasks_file = TASKS_FILE
    methods = tuple(SEMANTIC_METHODS)
    methods_help = f"Default: all of {' '.join(SEMANTIC_METHODS)}."
    defaults, smoke = DEFAULTS, SMOKE
    default_output = REPO_ROOT / "benchmarks" / "results" / "semantic_accuracy.json"

    def __init__(self, args: argparse.Namespace, data: dict):
        super().__init__(args, data)
        self.references: dict[tuple[str, str], list[tuple]] = {}

    @classmethod
    def lr_grid(cls, args: argparse.Namespace, method: str) -> tuple[float, ...]:
        return tuple(args.lr_grid or SEMANTIC_METHODS[method].lr_grid)

    @classmethod
    def protocol_extra(cls, args: argparse.Namespace) -> dict:
        return {"semantic_methods": {m: dataclasses.asdict(SEMANTIC_METHODS[m]) for m in args.methods},
                "icmoe_variants": {m: ICMOE_VARIANTS[SEMANTIC_METHODS[m].base] for m in args.methods
                                   if SEMANTIC_METHODS[m].base in ICMOE_VARIANTS},
                "unet_own_budget_factor": UNET_OWN_BUDGET_FACTOR, "prompted_counting": PROMPTED_COUNTING}

    @classmethod
    def write_report(cls, data: dict, report_path: Path, name: str) -> None:
        write_report(data, report_path, name)

    def method_spec(self, method: str) -> tuple[str | None, list[str], object | None, dict]:
        spec = SEMANTIC_METHODS[method]
        if spec.base is None:
            return None, [], None, {}
        argv, config, info = method_run_args(spec.base, self.data["protocol"]["matched_ranks"])
        return RUN_METHOD[spec.base], argv + list(spec.run_args), config, info

    @staticmethod
    def id2label(task: dict) -> dict[int, str]:
        """The task's classes, from the `labels.json` beside its data."""
        return class_names(str(REPO_ROOT / task["path"]), None)

    def label_names(self, task: dict) -> list[str]:
        id2label = self.id2label(task)
        return [id2label[index] for index in sorted(id2label)]

    def run_args(self, task: dict, method: str) -> list[str]:
        """What a run gets besides its data, seed and rate; limits count images whatever the family."""
        spec = SEMANTIC_METHODS[method]
        samples = self.sample_args(self.args.max_train_steps * spec.steps_factor)
        if spec.family == "unet":
            return [*samples, *spec.run_args, "--label_names", *self.label_names(task)]
        _, method_args, _, _ = self.method_spec(method)
        if spec.family == "prompted":
            return ["--prompt", "box", "--num_example_figures", "0", *samples, *method_args]
        return ["--prompt", "none", "--label_names", *self.label_names(task), "--num_example_figures", "0", *samples,
                *method_args]

    def settings(self, kind: str, task: dict, method: str, seed: int, lr: float | None) -> dict:
        _, _, config, _ = self.method_spec(method)
        settings = {
            "task": task["name"], "task_fingerprint": harness.task_fingerprint(task),
            "method": method, "seed": seed, "learning_rate": lr,
            "base_model": harness.portable(self.args.base_model) if SEMANTIC_METHODS[method].base else None,
            "run_args": self.run_args(task, method), "icmoe_config": config.to_dict() if config else None,
        }
        return {**settings, **self.split_settings(kind, task)}

    def execute(self, kind: str, task: dict, method: str, seed: int, lr: float | None, folder: Path) -> dict:
        spec = SEMANTIC_METHODS[method]
        dataset, eval_split = self.eval_data(kind, task)
        run_args = self.run_args(task, method)
        if spec.family == "unet":
            argv = [*run_args, "--dataset", str(dataset), "--eval_split", eval_split, "--seed", str(seed),
                    "--learning_rate", repr(lr)]
            return harness.train_and_score(argv, folder, entry=unet_baseline.main, keep=UNET_KEEP)
        _, _, config, _ = self.method_spec(method)
        if spec.family == "sam":
            return self.run_training_code(task, method, seed, lr, run_args=run_args, config=config, dataset=dataset,
                                          eval_split=eval_split, folder=folder)
        return self.prompted_run(task, method, seed, lr, run_args=run_args, config=config, dataset=dataset,
                                 eval_split=eval_split, folder=folder)

    def prompted_run(self, task: dict, method: str, seed: int, lr: float | None, *, run_args: list[str], config,
                     dataset: Path, eval_split: str, folder: Path) -> dict:
        """The prompted IC-MoE on one row per reference pair, its scores gathered per class; a pair too small for
        SAM's label resolution has no row, no score (None in `reference_pair_dice`) and no weight in the means."""
        id2label = self.id2label(task)
        label_size = self.label_size()
        content = source_id(harness.portable(dataset), harness.task_fingerprint(task), label_size)
        rows = per_pair_dataset(dataset, content, sorted(id2label), label_size, self.work / "splits")
        pairs = json.loads((rows / ROWS_FILE).read_text())
        # Image limits become row limits: the rows of the first N images.
        limits = {"train": len(pairs["train"]), eval_split: len(pairs[eval_split])}
        for option, split in (("--max_train_samples", "train"), ("--max_eval_samples", eval_split)):
            if option in run_args:
                at = run_args.index(option) + 1
                limits[split] = sum(image < int(run_args[at]) for image, _, _ in pairs[split])
                run_args = [*run_args[:at], str(sum(has_row for _, _, has_row in pairs[split][: limits[split]])),
                            *run_args[at + 1:]]
        results = self.run_training_code(task, method, seed, lr, run_args=run_args, config=config, dataset=rows,
                                         eval_split=eval_split, folder=folder)
        evaluated = pairs[eval_split][: limits[eval_split]]
        scored = [(image, class_id) for image, class_id, has_row in evaluated if has_row]
        per_row = iter(results["per_image"]["dice"])
        return {**results, **class_means_of_rows([c for _, c in scored], results["per_image"], id2label),
                "n_images": len({image for image, _, _ in evaluated}), "prompted_row_mean_dice": results["dice"],
                "reference_pair_dice": [next(per_row) if has_row else None for _, _, has_row in evaluated]}

    def label_size(self) -> int:
        """The longest side of the base SAM's label masks (its processor's `mask_size`)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(self.args.base_model).image_processor.mask_size["longest_edge"]

    def make_record(self, kind: str, task: dict, method: str, seed: int, lr: float | None, results: dict,
                    settings: dict) -> dict:
        spec = SEMANTIC_METHODS[method]
        run_method, _, _, info = self.method_spec(method)
        prefix = "val_" if kind == "selection" else ""
        n_pairs = len(results["per_image"]["dice"])
        if spec.family == "prompted":  # scored on the reference pairs alone
            pairs = results["reference_pair_dice"]
            n_reference = n_pairs
        else:  # scored on every pair present in the prediction or the reference: find the reference pairs
            references = self.reference_classes(task, *self.eval_data(kind, task))
            pairs = reference_pair_dice(results["per_image_class_ids"], results["per_image"]["dice"], references)
            n_reference = sum(map(len, references))
        record = {
            **self.base_record(kind, task, method, seed, lr, results),
            "family": spec.family, "run_method": run_method or "unet", **info,
            "semantic_decoder": results.get("semantic", {}).get("semantic_decoder"),
            f"{prefix}per_class_dice": {name: c["dice"] for name, c in results["per_class"].items()},
            "n_pairs": n_pairs, "false_positive_pairs": n_pairs - n_reference,
            "machine": harness.machine(), "settings": settings,
        }
        if spec.family == "prompted":
            record.update(prompt="box", counting=PROMPTED_COUNTING, unscored_pairs=pairs.count(None),
                          prompted_row_mean_dice=results["prompted_row_mean_dice"])
        if kind == "records":  # every reference pair's Dice, in order, for paired comparisons across methods
            record["per_pair_dice"] = None if pairs is None else [None if d is None else round(d, 5) for d in pairs]
        if "diagnostics" in results:
            record["diagnostics"] = results["diagnostics"]
        return record

    def reference_classes(self, task: dict, dataset: Path, split: str) -> list[tuple]:
        key = (str(dataset), split)
        if key not in self.references:
            self.references[key] = reference_classes(dataset, split, sorted(self.id2label(task)),
                                                     self.args.max_eval_samples)
        return self.references[key]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return harness.parse_args(argv, SemanticBenchmark)


def main(argv: list[str] | None = None) -> None:
    harness.main(argv, SemanticBenchmark)


if __name__ == "__main__":
    main()
