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

Every run has the same steps, batch size and learning rate (`--learning_rate`, by default the rate the 2-D prompt-free
benchmark chose for IC-MoE on its validation split); the soft-tissue window of the task's README.

    python benchmarks/semantic_volumes.py --output benchmarks/results/semantic_volumes.json
    python benchmarks/semantic_volumes.py --smoke --work_dir /tmp/vol     # a tiny run that checks the script

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

from benchmarks.harness import machine, portable, save  # noqa: E402
from training.arguments import DEFAULT_BASE_MODEL  # noqa: E402

TASK = REPO_ROOT / "training" / "data" / "ct_abdomen_volumes"
VALIDATION_CASES = 3  # whole training volumes held out for the clean-up decision
VALIDATION_SEED = 0
WINDOW = "soft_tissue"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", default=str(DEFAULT_BASE_MODEL))
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_train_steps", type=int, default=600)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--selection_seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no_prompted", action="store_true", help="Leave out the prompted upper bound.")
    parser.add_argument("--work_dir", type=Path, default=REPO_ROOT / "benchmarks" / ".cache" / "semantic_volumes")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="2 steps, one seed of each kind, one test volume.")
    args = parser.parse_args(argv)
    args.command = "python benchmarks/semantic_volumes.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.max_train_steps, args.selection_seeds, args.seeds = 2, [0], [0]
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
    from modeling_icmoe.cli import main as cli

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
                      "slice_dice": results["dice"]}
            if method == "icmoe":
                plain = predict(run_dir, test_pairs, run_dir / "predictions", clean_up=False)
                cleaned = predict(run_dir, test_pairs, run_dir / "predictions", clean_up=True)
                record.update(predict_dice=mean_dice(plain), predict_dice_keep_largest_component=mean_dice(cleaned),
                              per_volume=plain, per_volume_keep_largest_component=cleaned)
            test[key] = record
            save(data, args.output)
    return data


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    data = run_benchmark(args)
    choice = data["keep_largest_component"]
    print(f"[semantic_volumes] clean-up chosen: {choice['chosen']} (validation gains {choice['validation_gain_per_seed']})")
    for key, record in data["test"].items():
        print(f"[semantic_volumes] {key}: volume Dice {record['run_volumes']['dice']:.4f}"
              + (f", predict {record['predict_dice']:.4f}, with clean-up {record['predict_dice_keep_largest_component']:.4f}"
                 if "predict_dice" in record else ""))
    return data


if __name__ == "__main__":
    main()
