"""Training throughput at one and several processes: samples per second of one training job, launched as users launch
it (`accelerate launch --config_file configuration/accelerate/<config> training/run.py`).

Every configuration trains the same job (by default the main job: the stand-in SAM on the MR task with IC-MoE) for
`--max_train_steps` steps; its throughput is the global batch times the steps from `--from_step` to the last, over the
seconds between them, read from the run's own `train_log.jsonl` (`elapsed_seconds`), so that start-up, data loading
and evaluation do not count. The world size is read back from the run's `eval_results.json`, and a configuration
whose run recorded another world than it asked for fails the benchmark. Repetitions are interleaved (repetition r
runs every configuration once, in turn), so that the machine's drift hits all of them alike; each figure is the
median over the repetitions, with every repetition's value in the JSON.

    python benchmarks/scaling.py --output benchmarks/results/scaling_cpu.json           # CPU: 1 and 2 processes
    python benchmarks/scaling.py --smoke --work_dir /tmp/scaling                         # a tiny SAM: checks the script
    bash benchmarks/scaling_gpu.sh                                                       # the prepared GPU run

On CPU the configurations are one process with one thread, one process with two threads (the same cores as two
processes) and two processes with one thread each, at the same per-device batch (the global batch doubles with the
processes) and at the same global batch (half the per-device batch). The section between the scaling markers of
`docs/BENCHMARKS.md` is rendered from every `benchmarks/results/scaling_*.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.sections import write_section  # noqa: E402
from modeling_icmoe.run_folder import EVAL_RESULTS_NAME, TRAIN_LOG_NAME  # noqa: E402

CONFIGS = REPO_ROOT / "configuration" / "accelerate"
RESULTS = REPO_ROOT / "benchmarks" / "results"
REPORT_PATH = REPO_ROOT / "docs" / "BENCHMARKS.md"
MARK_BEGIN, MARK_END = "<!-- scaling:begin -->", "<!-- scaling:end -->"


@dataclass(frozen=True)
class Setup:
    """One way to launch the job: an Accelerate configuration, its process count, threads and per-device batch."""

    name: str
    config: str
    num_processes: int
    threads: int
    per_device_batch: int

    @property
    def global_batch(self) -> int:
        return self.num_processes * self.per_device_batch


def cpu_setups(batch: int) -> list[Setup]:
    return [
        Setup("1 process x 1 thread", "cpu.yaml", 1, 1, batch),
        Setup("1 process x 2 threads", "cpu.yaml", 1, 2, batch),
        Setup("2 processes x 1 thread", "cpu_2proc.yaml", 2, 1, batch),
        Setup("2 processes x 1 thread, same global batch", "cpu_2proc.yaml", 2, 1, batch // 2),
    ]


def gpu_setups(batch: int, gpus: int) -> list[Setup]:
    setups = [Setup("1 GPU", "single_gpu.yaml", 1, 1, batch)]
    counts = sorted({2, gpus} - {1}) if gpus >= 2 else []
    setups += [Setup(f"{n} GPUs (DDP)", "multi_gpu.yaml", n, 1, batch) for n in counts if n <= gpus]
    return setups


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to scale to (default: all visible).")
    parser.add_argument("--per_device_batch", type=int, default=4)
    parser.add_argument("--max_train_steps", type=int, default=40)
    parser.add_argument("--from_step", type=int, default=10, help="Steps before it are warm-up and do not count.")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--base_model", default=None, help="Default: the bundled stand-in SAM.")
    parser.add_argument("--vit_b", type=int, default=None, metavar="IMAGE_SIZE",
                        help="Train a SAM with the ViT-B architecture at this image size (PyTorch-default weights, "
                             "written into --work_dir) instead of --base_model; timing does not depend on the weights.")
    parser.add_argument("--dataset", default=None, help="Default: the main job's MR task.")
    parser.add_argument("--work_dir", type=Path, default=None, help="Default: a temporary folder.")
    parser.add_argument("--output", type=Path, default=None,
                        help="Write the JSON report here; every scaling_*.json beside it is rendered into --report_path.")
    parser.add_argument("--report_path", type=Path, default=REPORT_PATH)
    parser.add_argument("--smoke", action="store_true", help="A tiny SAM and few steps: checks the script in seconds.")
    parser.add_argument("--report", action="store_true", help="Only re-render docs/BENCHMARKS.md from the results.")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.smoke:
        args.max_train_steps, args.from_step, args.reps, args.per_device_batch = 6, 2, 1, 2
    if not 0 < args.from_step < args.max_train_steps:
        parser.error("--from_step must be between 0 and --max_train_steps")
    if args.per_device_batch < 2 or args.per_device_batch % 2:
        parser.error("--per_device_batch must be even (the same-global-batch setup halves it)")
    return args, extra


def _write_base(folder: Path, *, smoke: bool, image_size: int | None) -> str:
    """A SAM checkpoint with a processor: the tiny test SAM (`--smoke`) or the ViT-B architecture at `image_size`."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    from training.sam_init import init_sam_from_scratch, tiny_sam_config

    if not (folder / "config.json").is_file():
        if smoke:
            config = tiny_sam_config()
            size = config.vision_config.image_size
        else:
            size = image_size
            config = SamConfig(vision_config={"image_size": size}, prompt_encoder_config={"image_size": size})
        init_sam_from_scratch(SamModel(config), seed=0).save_pretrained(folder)
        low_res = 4 * size // config.vision_config.patch_size
        SamProcessor(SamImageProcessor(
            size={"longest_edge": size}, pad_size={"height": size, "width": size},
            mask_size={"longest_edge": low_res}, mask_pad_size={"height": low_res, "width": low_res},
        )).save_pretrained(folder)
    return str(folder)


def run_setup(setup: Setup, args, base: str, dataset: str | None, out: Path, extra: list[str]) -> dict:
    """Launches one training run and returns its throughput, read from its own files."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_"))}
    env["OMP_NUM_THREADS"] = str(setup.threads)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / setup.config),
        "--num_processes", str(setup.num_processes), str(REPO_ROOT / "training" / "run.py"),
        "--base_model", base, "--output_dir", str(out), "--overwrite_output_dir",
        "--max_train_steps", str(args.max_train_steps), "--per_device_train_batch_size", str(setup.per_device_batch),
        "--logging_steps", "1", "--no_zeroshot_eval", "--max_eval_samples", "4", "--num_example_figures", "0",
        "--dataloader_num_workers", "0", *(["--dataset", dataset] if dataset else []), *extra,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{setup.name} failed:\n{result.stderr[-4000:]}")
    recorded = json.loads((out / EVAL_RESULTS_NAME).read_text())
    if recorded["num_processes"] != setup.num_processes:
        raise RuntimeError(f"{setup.name} asked for {setup.num_processes} processes; the run recorded "
                           f"{recorded['num_processes']}.")
    log = {record["step"]: record for record in map(json.loads, (out / TRAIN_LOG_NAME).read_text().splitlines())}
    first, last = log[args.from_step], log[max(log)]
    seconds = last["elapsed_seconds"] - first["elapsed_seconds"]
    samples = (last["step"] - first["step"]) * setup.global_batch
    return {"samples_per_second": samples / seconds, "seconds": seconds, "steps": last["step"] - first["step"],
            "num_processes": recorded["num_processes"], "distributed_type": recorded.get("distributed_type")}


def run_benchmark(args, extra: list[str]) -> dict:
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="icmoe-scaling-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    if args.smoke or args.vit_b:
        base = _write_base(work_dir / ("sam-tiny" if args.smoke else f"sam-vit-b-{args.vit_b}"), smoke=args.smoke,
                           image_size=args.vit_b)
    else:
        base = args.base_model or str(REPO_ROOT / "training" / "standin" / "sam-standin")
    dataset = args.dataset
    if args.smoke and dataset is None:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from conftest import write_blob_dataset

        dataset = str(work_dir / "blobs")
        if not Path(dataset).exists():
            write_blob_dataset(Path(dataset), count=24)
    if args.device == "gpu":
        import torch

        setups = gpu_setups(args.per_device_batch, args.gpus or torch.cuda.device_count())
    else:
        setups = cpu_setups(args.per_device_batch)
    runs: dict[str, list[dict]] = {setup.name: [] for setup in setups}
    for rep in range(args.reps):
        for index, setup in enumerate(setups):
            run = run_setup(setup, args, base, dataset, work_dir / f"run{index}", extra)
            runs[setup.name].append(run)
            print(f"rep {rep}: {setup.name}: {run['samples_per_second']:.2f} samples/s", flush=True)
    reference = statistics.median(r["samples_per_second"] for r in runs[setups[0].name])
    rows = []
    for setup in setups:
        values = [r["samples_per_second"] for r in runs[setup.name]]
        rows.append({**asdict(setup), "global_batch": setup.global_batch,
                     "samples_per_second": statistics.median(values), "samples_per_second_runs": values,
                     "ratio_to_first": statistics.median(values) / reference,
                     "distributed_type": runs[setup.name][0]["distributed_type"]})
    return {
        "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores" if args.device == "cpu" else _gpu_name(),
        "base_model": "ViT-B" if args.vit_b else ("tiny test SAM" if args.smoke else _relative(base)),
        "image_size": args.vit_b,
        "dataset": dataset or "training/data/mr_brain_lesion",
        "max_train_steps": args.max_train_steps,
        "from_step": args.from_step,
        "reps": args.reps,
        "extra_args": extra,
        "command": "python " + " ".join(["benchmarks/scaling.py", *sys.argv[1:]]),
        "setups": rows,
    }


def _relative(path: str) -> str:
    """A path inside the repository as the repository names it; anything else as it is."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else path


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def render(reports: dict[str, dict]) -> str:
    lines = [MARK_BEGIN, "## Training throughput at one and several processes", "",
             "Generated by `benchmarks/scaling.py` from `benchmarks/results/scaling_*.json`; samples per second between "
             "the warm-up step and the last, read from each run's train_log.jsonl; the world size read back from each "
             "run's eval_results.json. Medians over interleaved repetitions.", ""]
    for name, report in sorted(reports.items()):
        lines += [f"### {name} ({report['machine']}; {report['base_model']}, {report['max_train_steps']} steps from "
                  f"step {report['from_step']}, {report['reps']} repetitions)", "",
                  f"`{report['command']}`", "",
                  "| setup | processes | threads | per-device batch | global batch | samples/s | ratio to the first | runs |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in report["setups"]:
            runs = ", ".join(f"{value:.2f}" for value in row["samples_per_second_runs"])
            lines.append(f"| {row['name']} | {row['num_processes']} | {row['threads']} | {row['per_device_batch']} | "
                         f"{row['global_batch']} | {row['samples_per_second']:.2f} | {row['ratio_to_first']:.2f} | "
                         f"{runs} |")
        lines.append("")
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


def write_report(report_path: Path = REPORT_PATH, results: Path = RESULTS) -> None:
    """Renders every `scaling_*.json` of `results` into the scaling section of `report_path`."""
    reports = {path.stem: json.loads(path.read_text()) for path in sorted(results.glob("scaling_*.json"))}
    if reports:
        write_section(report_path, render(reports), MARK_BEGIN, MARK_END)


def main(argv: list[str] | None = None) -> dict | None:
    args, extra = parse_args(argv)
    if args.report:
        write_report(args.report_path)
        return None
    report = run_benchmark(args, extra)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        write_report(args.report_path, args.output.parent)
    print(json.dumps(report["setups"], indent=2))
    return report


if __name__ == "__main__":
    main()
