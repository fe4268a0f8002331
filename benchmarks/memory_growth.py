"""Resident memory of a long CPU training run: does it grow after warm-up?

Runs `training/run.py` as a subprocess (the default IC-MoE job unless told otherwise) and samples the training
process's resident set size (`VmRSS` of `/proc/<pid>/status`, Linux) every `--interval` seconds, next to the last
step its `train_log.jsonl` has logged. Reports the RSS at the first sample at or after `--from_step` and at the last
sample before evaluation, and their ratio; the target is growth within 10 % between step 100 and the end.

    python benchmarks/memory_growth.py --max_train_steps 1000 --output benchmarks/results/memory_growth.json

Extra arguments after `--` go to `training/run.py` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modeling_icmoe.run_folder import TRAIN_LOG_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_train_steps", type=int, default=1000)
    parser.add_argument("--from_step", type=int, default=100, help="The step whose RSS is the reference.")
    parser.add_argument("--interval", type=float, default=1.0, help="Seconds between RSS samples.")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the run (default: unset).")
    parser.add_argument("--output", type=Path, default=None, help="Also write the JSON report here.")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.from_step >= args.max_train_steps:
        parser.error("--from_step must be below --max_train_steps")
    return args, extra


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def last_logged_step(log: Path) -> int:
    if not log.is_file():
        return 0
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def main(argv: list[str] | None = None) -> dict:
    args, extra = parse_args(argv)
    if not Path("/proc/self/status").is_file():
        raise SystemExit("This benchmark reads /proc/<pid>/status and needs Linux.")
    with tempfile.TemporaryDirectory() as work:
        output_dir = Path(work) / "run"
        command = [sys.executable, str(REPO_ROOT / "training" / "run.py"), "--output_dir", str(output_dir),
                   "--max_train_steps", str(args.max_train_steps), "--logging_steps", "10", "--no_zeroshot_eval",
                   "--num_example_figures", "0", "--dataloader_num_workers", "0", *extra]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
        # stderr (progress bars) goes to a file: a pipe read only at the end fills up and blocks the run.
        log = open(Path(work) / "stderr.log", "w+", encoding="utf-8")
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        samples = []  # (seconds, step, rss MiB)
        start = time.perf_counter()
        while process.poll() is None:
            rss = rss_mib(process.pid)
            if rss is not None:
                step = last_logged_step(output_dir / TRAIN_LOG_NAME)
                samples.append((round(time.perf_counter() - start, 1), step, rss))
            time.sleep(args.interval)
        log.seek(0)
        stderr = log.read()
        log.close()
        if process.returncode != 0:
            raise SystemExit(f"training failed ({process.returncode}):\n{stderr[-3000:]}")
    training = [s for s in samples if s[1] < args.max_train_steps]  # before the final evaluation and save
    reference = next((s for s in training if s[1] >= args.from_step), None)
    if reference is None or not training:
        raise SystemExit(f"No sample at or after step {args.from_step}; lower --interval or raise --max_train_steps.")
    end = training[-1]
    report = {
        "command": "python training/run.py " + " ".join(command[4:]),  # without the temporary output folder
        "max_train_steps": args.max_train_steps,
        "rss_mib_at_reference": {"step": reference[1], "rss": round(reference[2], 1)},
        "rss_mib_at_end_of_training": {"step": end[1], "rss": round(end[2], 1)},
        "growth_ratio": round(end[2] / reference[2], 4),
        "peak_rss_mib": round(max(s[2] for s in samples), 1),
        "samples": samples,
    }
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
