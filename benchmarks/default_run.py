"""The README's main job, `accelerate launch training/run.py`, run as a user runs it, once per seed.

Each seed is the README's command with `--seed S` (none for the default seed) and its own `--output_dir`; the
Dice, IoU and HD95 of IC-MoE and of zero-shot SAM are read back from each run's `eval_results.json`. The file
records the commands, the machine and the library versions, because small differences across them are expected.

    python benchmarks/default_run.py                       # seeds 42 (the default), 0, 1
    python benchmarks/default_run.py --seeds 42 --work_dir /tmp/default_run --output /tmp/default_run.json

Writes `benchmarks/results/default_run.json` (the README's figures of the default run come from it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import machine, portable, save  # noqa: E402
from modeling_icmoe.run_folder import EVAL_RESULTS_NAME  # noqa: E402
from training.arguments import parse_args as parse_run_args  # noqa: E402

COMMAND = ["accelerate", "launch", "training/run.py"]
DEFAULT_SEED = parse_run_args([]).seed  # the seed the README's command runs with: no --seed for it
LIBRARIES = ("torch", "transformers", "accelerate", "peft", "datasets", "numpy", "scipy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[DEFAULT_SEED, 0, 1])
    parser.add_argument("--work_dir", type=Path, default=REPO_ROOT / "benchmarks" / ".cache" / "default_run")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "default_run.json")
    return parser.parse_args(argv)


def seed_command(seed: int, output_dir: Path) -> list[str]:
    seed_args = [] if seed == DEFAULT_SEED else ["--seed", str(seed)]
    return COMMAND + seed_args + ["--output_dir", portable(output_dir)]


def run_seed(seed: int, work_dir: Path) -> dict:
    output_dir = work_dir / f"seed_{seed}"
    shutil.rmtree(output_dir, ignore_errors=True)  # an interrupted run left a partial folder
    command = seed_command(seed, output_dir)
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    results = json.loads((output_dir / EVAL_RESULTS_NAME).read_text())
    zero_shot = results["comparisons"]["zeroshot"]
    return {
        "seed": seed,
        "command": shlex.join(command),
        "dice": results["dice"], "dice_std": results["dice_std"],
        "iou": results["iou"], "iou_std": results["iou_std"],
        "hd95": results["hd95"], "hd95_std": results["hd95_std"],
        "n_images": results["n_images"],
        "zero_shot": {key: zero_shot[key] for key in ("dice", "dice_std", "iou", "iou_std", "hd95", "hd95_std")},
        "min_expert_share": results.get("min_expert_share"),
        "train_steps": results["train_steps"], "learning_rate": results["learning_rate"],
        "train_seconds": results["train_seconds"],
    }


def summary(runs: list[dict]) -> dict:
    dice = [run["dice"] for run in runs]
    return {
        "dice_mean": statistics.fmean(dice),
        "dice_std": statistics.stdev(dice) if len(dice) > 1 else 0.0,  # over seeds, sample std
        "dice_min": min(dice), "dice_max": max(dice),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    data = {
        "command": shlex.join(COMMAND),
        "seeds": args.seeds,
        "per_seed": "the command with --seed S (none for the default seed 42) and --output_dir <work_dir>/seed_S",
        "machine": machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": {name: version(name) for name in LIBRARIES},
        "runs": [],
    }
    for seed in args.seeds:
        data["runs"].append(run_seed(seed, args.work_dir))
        data["icmoe"] = summary(data["runs"])
        save(data, args.output)
    print(json.dumps(data["icmoe"], indent=2))
    return data


if __name__ == "__main__":
    main()
