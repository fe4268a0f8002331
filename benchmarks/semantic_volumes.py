"""The prompt-free model on the volumetric task (`training/data/ct_abdomen_volumes`): per-volume, per-class scores in
millimetres, the 3-D clean-up decided on validation volumes, and the prompted upper bound.

1. Clean-up decision (validation volumes only): for each selection seed, the prompt-free IC-MoE trains on the
   training volumes less a seeded hold-out of whole volumes (`VALIDATION_CASES`), then `icmoe-sam predict` segments
   each held-out volume with and without `--keep_largest_component`. The clean-up becomes the recommended setting
   only if it raises the mean Dice over classes and volumes at every selection seed.
2. Test: for each seed, the prompt-free IC-MoE trains on every training volume and `icmoe-sam predict` segments each
   test volume with the chosen setting (and the other, reported beside it); the run's own evaluation (slices stacked
   back per volume) is recorded too. The prompted IC-MoE with one box per class and slice from the labels is the
   upper bound: its per-volume scores span the prompted slices only (no false positives on absent slices).
3. Baselines (`--baselines`): LoRA at matched parameters, the adapter, decoder-only and full fine-tuning, each with
   the same prompt-free head as IC-MoE (run.py's `--prompt none` default decoder), and the MONAI U-Net from scratch
   (`unet_baseline.py`, the same steps; `unet_own_budget` at its own budget, 4x the steps). No method chooses its rate
   on these volumes: each takes the rate the 2-D prompt-free benchmark chose for it on its validation split
   (`semantic_accuracy.json`), as IC-MoE does. Each is scored by the run's own per-volume evaluation (the same
   function `icmoe-sam predict` agrees with on IC-MoE's runs), and compared with IC-MoE pair by pair: the
   difference on each (test volume, class), averaged over seeds, with a bootstrap interval over the test volumes.

Every run has the same steps, batch size and learning rate (`--learning_rate`, by default the rate the 2-D prompt-free
benchmark chose for IC-MoE on its validation split); the soft-tissue window of the task's README.

    python benchmarks/semantic_volumes.py --output benchmarks/results/semantic_volumes.json
    python benchmarks/semantic_volumes.py --learning_rate 3e-3 --baselines lora_matched adapter decoder full unet \
        --output benchmarks/results/semantic_volumes.json
    python benchmarks/semantic_volumes.py --smoke --work_dir /tmp/vol     # a tiny run that checks the script
    python benchmarks/semantic_volumes.py --report [RESULTS.json]         # the Markdown table of docs/BENCHMARKS.md

The results file is saved after every run; a restart reuses the runs it records.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from benchmarks import unet_baseline  # noqa: E402
from benchmarks.accuracy_methods import method_run_args  # noqa: E402
from benchmarks.harness import machine, portable, save  # noqa: E402
from benchmarks.semantic_methods import SEMANTIC_METHODS  # noqa: E402
from training.arguments import DEFAULT_BASE_MODEL  # noqa: E402

TASK = REPO_ROOT / "training" / "data" / "ct_abdomen_volumes"
VALIDATION_CASES = 3  # whole training volumes held out for the clean-up decision
VALIDATION_SEED = 0
WINDOW = "soft_tissue"
RATES_FROM = REPO_ROOT / "benchmarks" / "results" / "semantic_accuracy.json"  # the baselines' rates and ranks
RESULTS_FILE = REPO_ROOT / "benchmarks" / "results" / "semantic_volumes.json"
BASELINES = ("lora_matched", "adapter", "decoder", "full", "unet", "unet_own_budget")
BOOTSTRAP_SAMPLES = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", default=str(DEFAULT_BASE_MODEL))
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_train_steps", type=int, default=600)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--selection_seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no_prompted", action="store_true", help="Leave out the prompted upper bound.")
    parser.add_argument("--baselines", nargs="*", choices=BASELINES, default=[],
                        help="Baselines to run on the test volumes, in this order, after IC-MoE.")
    parser.add_argument("--baseline_seeds", type=int, nargs="+", default=None,
                        help="Seeds of the baselines (default: --seeds); `unet_own_budget` is the costliest.")
    parser.add_argument("--rates_from", type=Path, default=RATES_FROM,
                        help="The 2-D prompt-free results file whose chosen rates and matched ranks the baselines take.")
    parser.add_argument("--work_dir", type=Path, default=REPO_ROOT / "benchmarks" / ".cache" / "semantic_volumes")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="2 steps, one seed of each kind, one test volume.")
    parser.add_argument("--report", nargs="?", const=str(RESULTS_FILE), default=None, metavar="RESULTS",
                        help="Print the Markdown table of a results file (default: the recorded one) and stop.")
    args = parser.parse_args(argv)
    args.command = "python benchmarks/semantic_volumes.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.max_train_steps, args.selection_seeds, args.seeds = 2, [0], [0]
    args.baseline_seeds = args.baseline_seeds or args.seeds
    args.output = args.output or args.work_dir / "semantic_volumes.json"
    return args


def cases(folder: Path) -> list[tuple[Path, Path]]:
    """(image, label) of every volume of `folder` (`imagesTr`/`labelsTr` layout), sorted by name."""
    return [(image, folder.parent / folder.name.replace("images", "labels") / image.name)
            for image in sorted(folder.glob("*.nii.gz"))]


def validation_csv(work: Path) -> tuple[Path, list[str]]:
    """A CSV of the training volumes with a seeded hold-out of `VALIDATION_CASES` whole volumes as `validation`."""
    pairs = cases(TASK / "imagesTr")
    held = set(random.Random(VALIDATION_SEED).sample(range(len(pairs)), VALIDATION_CASES))
    path = work / "validation_split.csv"
    work.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "split"])
        for index, (image, label) in enumerate(pairs):
            writer.writerow([image.resolve(), label.resolve(), "validation" if index in held else "train"])
    return path, [pairs[i][0].name for i in sorted(held)]


def train(args, argv: list[str], output_dir: Path) -> dict:
    from training.arguments import parse_args as run_args
    from training.loop import run

    shutil.rmtree(output_dir, ignore_errors=True)
    return run(run_args(["--base_model", args.base_model, "--window", WINDOW, "--max_train_steps",
                         str(args.max_train_steps), "--per_device_train_batch_size",
                         str(args.per_device_train_batch_size), "--learning_rate", repr(args.learning_rate),
                         "--num_example_figures", "0", "--dataloader_num_workers", "0", "--no_zeroshot_eval",
                         "--output_dir", str(output_dir), *argv]))


def predict(model_dir: Path, volumes: list[tuple[Path, Path]], out: Path, *, clean_up: bool) -> list[dict]:
    """`icmoe-sam predict` on each volume against its reference; one record of per-class Dice per volume."""
    from modeling_icmoe.medical.cli import main as cli

    records = []
    for image, label in volumes:
        stem = image.name.removesuffix(".nii.gz")
        name = stem + ("_lcc" if clean_up else "")
        metrics = out / f"{name}.json"
        status = cli(["predict", "--model", str(model_dir), "--input", str(image), "--output",
                      str(out / f"{name}.nii.gz"), "--window", WINDOW, "--reference",
                      str(label), "--metrics_output", str(metrics), "--device", "cpu",
                      *(["--keep_largest_component"] if clean_up else [])])
        if status != 0:
            raise RuntimeError(f"icmoe-sam predict failed on {image} (exit status {status}); its message is above.")
        scores = json.loads(metrics.read_text())
        records.append({"volume": stem, "dice": {scores["label_names"][k]: v["dice"]
                                                 for k, v in scores["per_class"].items()}})
    return records


def chosen_rates(path: Path) -> tuple[dict[str, float], dict]:
    """The rate each method of the 2-D prompt-free benchmark chose on its validation split, and its matched ranks."""
    if not path.is_file():
        raise SystemExit(f"--rates_from: no results file at {path}")
    source = json.loads(path.read_text())
    rates: dict[str, set[float]] = {}
    for record in source.get("selection", []):
        if record.get("chosen"):
            rates.setdefault(record["method"], set()).add(record["learning_rate"])
    ambiguous = {method: sorted(values) for method, values in rates.items() if len(values) != 1}
    if ambiguous:
        raise SystemExit(f"{path}: more than one chosen rate for {ambiguous} (one task per method is expected).")
    return {method: values.pop() for method, values in rates.items()}, source["protocol"]["matched_ranks"]


def baseline_run(args, method: str, seed: int, lr: float, matched: dict, run_dir: Path) -> dict:
    """One baseline trained on the training volumes and scored on the test volumes by the run's own evaluation."""
    spec = SEMANTIC_METHODS[method]
    steps = args.max_train_steps * spec.steps_factor
    if spec.family == "unet":
        shutil.rmtree(run_dir, ignore_errors=True)
        return unet_baseline.main(["--dataset", str(TASK), "--window", WINDOW, "--max_train_steps", str(steps),
                                   "--per_device_train_batch_size", str(args.per_device_train_batch_size),
                                   "--learning_rate", repr(lr), "--seed", str(seed), "--output_dir", str(run_dir),
                                   *spec.run_args])
    argv, _, _ = method_run_args(spec.base, matched)
    return train(args, ["--dataset", str(TASK), "--prompt", "none", "--seed", str(seed), "--learning_rate", repr(lr),
                        *argv], run_dir)


def per_volume_from_cases(per_case: list[dict]) -> list[dict]:
    """A run's per-case scores (`volumes.per_case` of eval_results.json) as `predict`'s per-volume records."""
    volumes: dict[str, dict] = {}
    for entry in per_case:
        volumes.setdefault(entry["case"], {})[entry["label_name"]] = entry["dice"]
    return [{"volume": name, "dice": dice} for name, dice in sorted(volumes.items())]


def paired_difference(test: dict, method: str, reference: str = "icmoe", seed: int = 0) -> dict | None:
    """`reference` minus `method` on each (test volume, class) both score, averaged over the seeds both ran; the
    headline difference (mean over classes of each class's mean over volumes) and a 95 % bootstrap interval over the
    test volumes (resampled whole, with their classes)."""
    def by_seed(name: str) -> dict[int, dict[tuple[str, str], float]]:
        runs = {}
        for record in test.values():
            if record["method"] == name:
                runs[record["seed"]] = {(v["volume"], c): d for v in record["per_volume"] for c, d in v["dice"].items()}
        return runs

    def headline(scores: dict[tuple[str, str], float], sample: list[str]) -> float:
        """The headline rule (`mean_dice`) on the volumes of `sample`, a volume drawn twice counted twice."""
        by_volume: dict[str, dict[str, float]] = {}
        for (volume, name), value in scores.items():
            by_volume.setdefault(volume, {})[name] = value
        return mean_dice([{"volume": volume, "dice": by_volume[volume]} for volume in sample])

    ours, theirs = by_seed(reference), by_seed(method)
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    pairs = sorted(set.intersection(*(set(ours[s]) & set(theirs[s]) for s in seeds)))
    diff = {pair: float(np.mean([ours[s][pair] - theirs[s][pair] for s in seeds])) for pair in pairs}
    volumes = sorted({volume for volume, _ in pairs})
    rng = np.random.default_rng(seed)
    draws = [headline(diff, list(rng.choice(volumes, size=len(volumes)))) for _ in range(BOOTSTRAP_SAMPLES)]
    per_seed = [headline({p: ours[s][p] for p in pairs}, volumes) - headline({p: theirs[s][p] for p in pairs}, volumes)
                for s in seeds]
    return {"reference": reference, "method": method, "seeds": seeds, "pairs": len(pairs), "volumes": len(volumes),
            "difference": headline(diff, volumes), "ci95": [float(np.percentile(draws, 2.5)),
                                                      float(np.percentile(draws, 97.5))],
            "per_seed_difference": per_seed, "bootstrap_samples": BOOTSTRAP_SAMPLES}


def mean_dice(records: list[dict]) -> float:
    """Mean over classes of each class's mean Dice over volumes (the headline rule of docs/METRICS.md)."""
    by_class: dict[str, list[float]] = {}
    for record in records:
        for name, value in record["dice"].items():
            by_class.setdefault(name, []).append(value)
    return float(np.mean([np.mean(values) for values in by_class.values()]))


def run_benchmark(args: argparse.Namespace) -> dict:
    work = args.work_dir.resolve()
    data = json.loads(args.output.read_text()) if args.output.is_file() else {}
    settings = {k: (portable(v) if k == "base_model" else v) for k, v in vars(args).items()
                if k in ("base_model", "learning_rate", "max_train_steps", "per_device_train_batch_size")}
    if data.get("settings", settings) != settings:
        raise SystemExit(f"{args.output} was made with other settings {data['settings']}; use another --output.")
    data.update({"settings": settings, "window": WINDOW, "machine": machine(), "task": portable(TASK)})
    data.setdefault("commands", [])
    data["commands"] = list(dict.fromkeys(data["commands"] + [args.command]))
    selection, test = data.setdefault("selection", {}), data.setdefault("test", {})

    split_csv, held_out = validation_csv(work)
    data["validation_volumes"] = held_out
    held_pairs = [(TASK / "imagesTr" / name, TASK / "labelsTr" / name) for name in held_out]
    for seed in args.selection_seeds:
        if str(seed) in selection:
            continue
        run_dir = work / "runs" / f"select_seed{seed}"
        train(args, ["--dataset", str(split_csv), "--prompt", "none", "--eval_split", "validation",
                     "--label_names", *json.loads((TASK / "dataset.json").read_text())["labels"].values(),
                     "--seed", str(seed)], run_dir)
        plain = predict(run_dir, held_pairs, run_dir / "predictions", clean_up=False)
        cleaned = predict(run_dir, held_pairs, run_dir / "predictions", clean_up=True)
        selection[str(seed)] = {"dice": mean_dice(plain), "dice_keep_largest_component": mean_dice(cleaned),
                                "per_volume": plain, "per_volume_keep_largest_component": cleaned}
        save(data, args.output)
    gains = [s["dice_keep_largest_component"] - s["dice"] for s in selection.values()]
    clean_up = bool(gains) and all(gain > 0 for gain in gains)
    data["keep_largest_component"] = {"chosen": clean_up, "validation_gain_per_seed": gains,
                                      "rule": "chosen only if it raises the validation Dice at every selection seed"}
    test_pairs = cases(TASK / "imagesTs")[: 1 if args.smoke else None]
    methods = [("icmoe", ["--prompt", "none"])] + ([] if args.no_prompted else [("icmoe_prompted", ["--prompt", "box"])])
    for method, extra in methods:
        for seed in args.seeds:
            key = f"{method}/seed{seed}"
            if key in test:
                continue
            run_dir = work / "runs" / method / f"seed{seed}"
            results = train(args, ["--dataset", str(TASK), *extra, "--seed", str(seed)], run_dir)
            record = {"method": method, "seed": seed, "run_volumes": results["volumes"]["mean"],
                      "run_volumes_per_class": results["volumes"]["per_class"], "train_seconds": results["train_seconds"],
                      "trainable_params": results["trainable_params"], "slice_dice": results["dice"]}
            if method == "icmoe":
                plain = predict(run_dir, test_pairs, run_dir / "predictions", clean_up=False)
                cleaned = predict(run_dir, test_pairs, run_dir / "predictions", clean_up=True)
                record.update(predict_dice=mean_dice(plain), predict_dice_keep_largest_component=mean_dice(cleaned),
                              per_volume=plain, per_volume_keep_largest_component=cleaned)
            test[key] = record
            save(data, args.output)
    if args.baselines:
        rates, matched = chosen_rates(args.rates_from)
        data["baselines"] = {"rates_from": portable(args.rates_from), "matched_ranks": matched,
                             "rates": {m: rates[m.removesuffix("_own_budget")] for m in args.baselines},
                             "rule": "each method's rate as the 2-D prompt-free benchmark chose it on validation; "
                                     "the U-Net at its own budget takes the U-Net's, as on the 2-D task"}
    for method in args.baselines:
        for seed in args.baseline_seeds:
            key = f"{method}/seed{seed}"
            if key in test:
                continue
            lr = data["baselines"]["rates"][method]
            run_dir = work / "runs" / method / f"seed{seed}"
            results = baseline_run(args, method, seed, lr, data["baselines"]["matched_ranks"], run_dir)
            per_volume = per_volume_from_cases(results["volumes"]["per_case"])
            test[key] = {"method": method, "seed": seed, "learning_rate": lr, "run_volumes": results["volumes"]["mean"],
                         "run_volumes_per_class": results["volumes"]["per_class"],
                         "train_seconds": results["train_seconds"], "train_steps": results.get("train_steps"),
                         "trainable_params": results.get("trainable_params"), "slice_dice": results["dice"],
                         "per_volume": per_volume, "run_dice": mean_dice(per_volume)}
            data["paired"] = {m: paired_difference(test, m) for m in dict.fromkeys(
                r["method"] for r in test.values() if r["method"] not in ("icmoe", "icmoe_prompted"))}
            save(data, args.output)
    return data


METHOD_NAMES = {
    "icmoe": "IC-MoE (`queries`)", "lora_matched": "LoRA, matched parameters", "adapter": "adapter",
    "full": "full fine-tuning", "decoder": "decoder only", "unet": "U-Net from scratch, same steps",
    "unet_own_budget": "U-Net from scratch, 4x the steps", "icmoe_prompted": "prompted IC-MoE, a box per organ and slice",
}


def report(data: dict) -> str:
    """The Markdown table of the test volumes: each method's Dice per volume over seeds, HD95, NSD, trainable
    parameters and rate, and IC-MoE's paired difference from it (docs/BENCHMARKS.md holds this table as rendered)."""
    lines = ["| method | seeds | Dice per volume | HD95 (mm) | NSD at 1 mm | trainable | rate | IC-MoE minus it "
             "[95 % interval over volumes] |", "|---|---|---|---|---|---|---|---|"]
    by_method: dict[str, list[dict]] = {}
    for record in data["test"].values():
        by_method.setdefault(record["method"], []).append(record)
    for method, records in by_method.items():
        dice = [r["run_volumes"]["dice"] for r in records]
        spread = f" ± {np.std(dice, ddof=1):.3f}" if len(dice) > 1 else ""
        pair = data.get("paired", {}).get(method)
        paired = (f"{pair['difference']:+.3f} [{pair['ci95'][0]:+.3f}, {pair['ci95'][1]:+.3f}]" if pair else
                  "reference" if method == "icmoe" else "")
        params = records[0].get("trainable_params")
        rate = records[0].get("learning_rate", data["settings"]["learning_rate"])
        lines.append(
            f"| {METHOD_NAMES.get(method, method)} | {len(dice)} | {np.mean(dice):.3f}{spread} | "
            f"{np.mean([r['run_volumes']['hd95'] for r in records]):.1f} | "
            f"{np.mean([r['run_volumes']['nsd'] for r in records]):.3f} | "
            f"{f'{params:,}' if params else ''} | {rate:g} | {paired} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.report is not None:
        data = json.loads(Path(args.report).read_text())
        print(report(data))
        return data
    data = run_benchmark(args)
    choice = data["keep_largest_component"]
    print(f"[semantic_volumes] clean-up chosen: {choice['chosen']} (validation gains {choice['validation_gain_per_seed']})")
    for method, pair in data.get("paired", {}).items():
        if pair:
            print(f"[semantic_volumes] icmoe - {method}: {pair['difference']:+.4f} "
                  f"[{pair['ci95'][0]:+.4f}, {pair['ci95'][1]:+.4f}] over {pair['volumes']} volumes, seeds {pair['seeds']}")
    for key, record in data["test"].items():
        print(f"[semantic_volumes] {key}: volume Dice {record['run_volumes']['dice']:.4f}"
              + (f", predict {record['predict_dice']:.4f}, with clean-up {record['predict_dice_keep_largest_component']:.4f}"
                 if "predict_dice" in record else ""))
    return data


if __name__ == "__main__":
    main()
