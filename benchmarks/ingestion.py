"""Ingestion of 3-D volumes: how long slicing NIfTI volumes into the `datasets` cache takes as the depth grows, before
and after the slicing that reads each slice as a view.

Synthetic CT volumes (`--size` x `--size` x D voxels for each depth D of `--depths`, int16 in HU, gzip NIfTI with an
LPS-like affine that canonical reading flips: a body, three objects of the label map over the middle half of the
depth, noise; seeded) are written to a temporary folder and listed in a CSV as the split `train`, beside a tiny
16 x 16 x 4 volume as the split `test` (so that no volume is held out for validation; its few milliseconds count in
every timing, and its rows in none). Each code runs in a process of its own with one thread (`OMP_NUM_THREADS=1`,
`torch.set_num_threads(1)`), ingests two tiny volumes first (imports and first calls, not measured) and then, for
each depth:
- `first`: `training.volume_data.load_volume_dataset` into a fresh `datasets` cache folder, then `check_masks` over
  the rows of both splits (the first check: every image and mask decoded);
- `restart`: the same two calls again on that cache, which is what a re-started run pays;
- `num_proc`: `load_volume_dataset(num_proc=--num_proc)` into a fresh cache (the current code only).
The current code is the working tree's; `before` is the code of `--before_ref` (the last commit before the change,
`git archive`d into the temporary folder), on the first `--before_volumes` volumes of each depth: it cut every slice
with `np.take`, which copies the whole (Fortran-ordered) volume for each slice. `breakdown` times the parts of one
volume of the deepest depth (current code): reading the image and the label map, listing its labels, scaling the
intensities (by the default rule, percentiles over the volume, and by a CT window), and the PNG encoding of its rows'
images (one per slice) and masks (one per row), at the zlib level slicing uses and at PIL's default (what
`datasets.Image` writes for an array, and what the code before stored), with their sizes.

    python benchmarks/ingestion.py --output benchmarks/results/ingestion.json      # about 10 minutes on one core
    python benchmarks/ingestion.py --smoke --output /tmp/ingestion.json --report_path /tmp/BENCHMARKS.md  # seconds
    python benchmarks/ingestion.py --report       # re-render docs/BENCHMARKS.md's section from the results file

Writes the JSON report (`--output`) and renders it into the section between the ingestion markers of
`docs/BENCHMARKS.md` (`--report_path`; text outside the markers is kept).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.sections import write_section  # noqa: E402

RESULT = REPO_ROOT / "benchmarks" / "results" / "ingestion.json"
DEFAULT_REPORT = REPO_ROOT / "docs" / "BENCHMARKS.md"
MARK_BEGIN, MARK_END = "<!-- ingestion:begin -->", "<!-- ingestion:end -->"
BEFORE_REF = "2b4fc42"  # the last commit whose slicing used np.take
LABEL_SIZE = 256  # SAM ViT-B's label resolution (the processor's mask_size), as training passes it
CT_WINDOW = "soft_tissue"  # the window whose scaling the breakdown times beside the percentile rule
PIL_PNG_LEVEL = 6  # PIL's default zlib level: what `datasets.Image` writes for an array
TARGET_SECONDS_PER_VOLUME = 5.0  # the issue's: a 512 x 512 x 256 volume on one core
TARGET_DEPTH_RATIO = 5.0  # seconds per volume at 256 over 64 (linear in depth: 4)
# Synthetic CT: air, a soft-tissue body, three objects (HU offsets above the body), noise in HU.
AIR_HU, BODY_HU, OBJECT_HU, NOISE_HU = -1000, 40, (60, 120, 180), 20.0
AFFINE_DIAGONAL = (-0.8, -0.8, 2.5)  # mm; the first two axes run right-to-left and front-to-back (LPS-like)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="Rows and columns of every slice.")
    parser.add_argument("--depths", type=int, nargs="+", default=[64, 256], help="Slices per volume, one run each.")
    parser.add_argument("--volumes", type=int, default=2, help="Volumes per depth (the current code).")
    parser.add_argument("--before_volumes", type=int, default=1, help="Of those, the ones the old code slices.")
    parser.add_argument("--before_ref", default=BEFORE_REF, help="Git revision of the old code; `none` skips it.")
    parser.add_argument("--num_proc", type=int, default=2, help="Processes of the parallel run; 0 skips it.")
    parser.add_argument("--window", default=None,
                        help="A CT window preset (CT_WINDOWS) for every run (default: none, the percentile rule).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="The JSON report (default: printed only).")
    parser.add_argument("--report", action="store_true", help="Only re-render the docs section from --output "
                        f"(default {RESULT.relative_to(REPO_ROOT)}).")
    parser.add_argument("--report_path", type=Path, default=None,
                        help="Default docs/BENCHMARKS.md (--smoke: none unless given).")
    parser.add_argument("--smoke", action="store_true", help="32 x 32 slices, depths 4 and 8: checks the script.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # a measuring process (internal)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.depths = 32, [4, 8]
    if args.size < 16 or min(args.depths) < 4:
        parser.error("--size must be >= 16 and every depth >= 4 (the objects need room)")
    if not 1 <= args.before_volumes <= args.volumes:
        parser.error(f"--before_volumes must be in 1..--volumes ({args.volumes}), got {args.before_volumes}")
    if args.num_proc < 0:
        parser.error(f"--num_proc must be >= 0, got {args.num_proc}")
    return args


# ------------------------------------------------------------------------------------------------ volumes
def write_volumes(folder: Path, *, size: int, depth: int, count: int, seed: int) -> list[tuple[str, str]]:
    """`count` CT volumes and label maps (gzip NIfTI) in `folder`; returns their (image, label) file names."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size] / size  # (size, size), in slice widths
    body = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.32) ** 2 <= 1
    pairs = []
    for n in range(count):
        image = np.empty((size, size, depth), dtype=np.int16)
        labels = np.zeros((size, size, depth), dtype=np.uint8)
        centres = rng.uniform(0.35, 0.65, size=(3, 2))
        for k in range(depth):
            plane = np.where(body, BODY_HU, AIR_HU).astype(np.float64)  # (size, size)
            if depth // 4 <= k < 3 * depth // 4:  # the objects fill the middle half, growing and shrinking
                swell = np.sin(np.pi * (k - depth // 4 + 0.5) / (depth // 2))
                for label, ((cy, cx), hu, radius) in enumerate(zip(centres, OBJECT_HU, (0.08, 0.06, 0.04)), start=1):
                    inside = ((yy - cy) ** 2 + (xx - cx) ** 2 <= (radius * (0.5 + 0.5 * swell)) ** 2) & body
                    labels[..., k][inside] = label
                    plane[inside] += hu
            image[..., k] = np.round(plane + rng.normal(0.0, NOISE_HU, plane.shape))
        affine = np.diag([*AFFINE_DIAGONAL, 1.0])
        names = (f"case{n:03d}.nii.gz", f"case{n:03d}_labels.nii.gz")
        nib.save(nib.Nifti1Image(image, affine), str(folder / names[0]))
        nib.save(nib.Nifti1Image(labels, affine), str(folder / names[1]))
        pairs.append(names)
    return pairs


def write_csv(path: Path, train: list[tuple[str, str]], test: tuple[str, str]) -> Path:
    """A CSV of volume pairs (paths relative to it): `train` the split `train`, `test` the split `test`."""
    lines = [f"{image},{label},train\n" for image, label in train] + ["{},{},test\n".format(*test)]
    path.write_text("image,label,split\n" + "".join(lines))
    return path


def export_code(ref: str, folder: Path) -> Path:
    """The library and training code of git revision `ref`, extracted into `folder`."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref, "modeling_icmoe", "training"], cwd=REPO_ROOT,
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {ref} failed: {archive.stderr.decode().strip()}")
    folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


# ------------------------------------------------------------------------------------------------ measuring
def run_child(code: Path, task: dict, work: Path) -> dict:
    """Runs `measure_in_child` in a new one-thread process that imports the library from `code`."""
    result = work / f"result-{time.monotonic_ns()}.json"
    spec = json.dumps({**task, "code": str(code), "result": str(result)})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    load = os.getloadavg()[0]
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec], env=env,
                               cwd=work, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"[ingestion] the measuring process failed:\n{completed.stderr[-4000:]}")
    # The machine may be shared: its 1-minute load average as the process started and ended.
    return {**json.loads(result.read_text()), "load_average": [load, os.getloadavg()[0]]}


def measure_in_child(spec: dict) -> None:
    sys.path.insert(0, spec["code"])  # before the repository: this code is the one measured
    import datasets
    import torch

    from training.data import check_masks
    from training.volume_data import load_volume_dataset

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()

    def ingest(source: str, cache: str, num_proc: int | None = None, check: bool = True) -> dict:
        datasets.config.HF_DATASETS_CACHE = cache  # read when a builder is made: one cache folder per run
        start = time.perf_counter()
        data, summary = load_volume_dataset(source, image_column="image", mask_column="mask",
                                            window=spec["window"], label_size=LABEL_SIZE,
                                            **({"num_proc": num_proc} if num_proc else {}))
        entry = {"seconds": time.perf_counter() - start, "volumes": summary.splits["train"]["volumes"],
                 "rows": len(data["train"]),  # the measured volumes (the tiny test volume's time counts)
                 "cache_bytes": sum(os.path.getsize(f["filename"]) for f in data["train"].cache_files)}
        if check:
            start = time.perf_counter()
            for name, split in data.items():
                check_masks(split, image_column="image", mask_column="mask", label_ids=None, name=name,
                            label_size=LABEL_SIZE)
            entry["check_seconds"] = time.perf_counter() - start
        return entry

    ingest(spec["warmup"], str(Path(spec["cache"]) / "warmup"))  # imports and first calls, measured nowhere
    results = {}
    for depth, source in spec["sources"].items():
        cache = Path(spec["cache"]) / depth
        results[depth] = {"first": ingest(source, str(cache / "first"))}
        results[depth]["restart"] = ingest(source, str(cache / "first"))
        if spec.get("num_proc"):
            results[depth]["num_proc"] = ingest(source, str(cache / "num_proc"), spec["num_proc"], check=False)
    if spec.get("breakdown"):
        results["breakdown"] = breakdown(spec["breakdown"], spec["window"])
    Path(spec["result"]).write_text(json.dumps(results))


def breakdown(source: str, window: str) -> dict:
    """Seconds of the parts of slicing one volume (the first of the CSV `source`), with the current code."""
    import numpy as np

    from PIL import Image

    from modeling_icmoe.medical.volumes import label_values, load_label_map, load_volume, slice_view, to_uint8_volume
    from training.volume_data import PNG_COMPRESS_LEVEL, _new_counts, _rows, discover_cases

    splits, _ = discover_cases(source, [])
    case, axis = splits["train"][0], 2  # axial, the default
    seconds = {}
    start = time.perf_counter()
    volume = load_volume(case.image)
    seconds["read_image"] = time.perf_counter() - start
    start = time.perf_counter()
    labels = load_label_map(case.label, volume)
    seconds["read_label_map"] = time.perf_counter() - start
    start = time.perf_counter()
    label_values(labels.data)
    seconds["list_labels"] = time.perf_counter() - start
    start = time.perf_counter()
    to_uint8_volume(volume)
    seconds["scale_percentiles"] = time.perf_counter() - start
    start = time.perf_counter()
    to_uint8_volume(volume, window=CT_WINDOW)
    seconds["scale_ct_window"] = time.perf_counter() - start
    pixels = to_uint8_volume(volume, window=window)
    rows = list(_rows(case, axis, window, None, {}, LABEL_SIZE, _new_counts()))  # the rows slicing writes
    masks = [np.asarray(Image.open(io.BytesIO(row["mask"]["bytes"]))) for row in rows]
    images = [np.ascontiguousarray(slice_view(pixels, axis, k)) for k in sorted({row["slice_index"] for row in rows})]
    png = {}
    for level in (PNG_COMPRESS_LEVEL, PIL_PNG_LEVEL):
        start, size = time.perf_counter(), 0
        for array in images + masks:
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
            size += buffer.tell()
        png[str(level)] = {"seconds": time.perf_counter() - start, "bytes": size}
    seconds["png_encoding"] = png[str(PNG_COMPRESS_LEVEL)]["seconds"]
    return {"seconds": seconds, "images": len(images), "masks": len(masks), "depth": volume.num_slices(axis),
            "png_level": PNG_COMPRESS_LEVEL, "png_by_level": png}


def with_rates(entry: dict, depth: int) -> dict:
    """Seconds per volume and slices (and rows) per second of one ingestion."""
    seconds = entry["seconds"]
    return {**entry, "seconds_per_volume": seconds / entry["volumes"],
            "slices_per_s": entry["volumes"] * depth / seconds, "rows_per_s": entry["rows"] / seconds}


def run_benchmark(args, argv: list[str]) -> dict:
    report = {
        "command": "python benchmarks/ingestion.py " + shlex.join(argv),
        "machine": f"CPU, {os.cpu_count()} cores, one thread per process; {platform.platform()}",
        "size": args.size, "depths": args.depths, "volumes": args.volumes, "before_volumes": args.before_volumes,
        "before_ref": None if args.before_ref == "none" else args.before_ref, "window": args.window,
        "label_size": LABEL_SIZE, "num_proc": args.num_proc or None, "seed": args.seed,
    }
    with tempfile.TemporaryDirectory(prefix="icmoe-ingestion-") as work:
        work = Path(work)
        tiny = [tuple(f"../tiny/{name}" for name in pair)
                for pair in write_volumes(work / "tiny", size=16, depth=4, count=2, seed=args.seed)]
        warmup = str(write_csv(work / "tiny" / "warmup.csv", [tiny[0]], tiny[1]))
        sources, before_sources = {}, {}
        for depth in args.depths:
            print(f"[ingestion] writing {args.volumes} volumes of {args.size} x {args.size} x {depth}", flush=True)
            folder = work / f"depth{depth}"
            pairs = write_volumes(folder, size=args.size, depth=depth, count=args.volumes, seed=args.seed + depth)
            sources[str(depth)] = str(write_csv(folder / "all.csv", pairs, tiny[1]))
            before_sources[str(depth)] = str(write_csv(folder / "before.csv", pairs[: args.before_volumes], tiny[1]))
        task = {"window": args.window, "num_proc": args.num_proc, "sources": sources, "cache": str(work / "cache"),
                "breakdown": sources[str(max(args.depths))], "warmup": warmup}
        print("[ingestion] current code", flush=True)
        after = run_child(REPO_ROOT, task, work)
        report["breakdown"] = after.pop("breakdown")
        report["load_average"] = {"current": after.pop("load_average")}
        before = {}
        if report["before_ref"]:
            print(f"[ingestion] code of {args.before_ref}", flush=True)
            code = export_code(args.before_ref, work / "before_code")
            before = run_child(code, {"window": args.window, "sources": before_sources, "warmup": warmup,
                                      "cache": str(work / "cache_before")}, work)
            report["load_average"]["before"] = before.pop("load_average")
    report["depths_measured"] = {}
    for depth in args.depths:
        runs = {name: with_rates(entry, depth) for name, entry in after[str(depth)].items()}
        runs.update({f"before_{name}": with_rates(entry, depth) for name, entry in before.get(str(depth), {}).items()})
        report["depths_measured"][str(depth)] = runs
    report["summary"] = summarize(report)
    return report


def summarize(report: dict) -> dict:
    """Growth with depth (seconds per volume at the deepest over the shallowest depth) and the issue's targets."""
    runs = report["depths_measured"]
    low, high = str(min(report["depths"])), str(max(report["depths"]))
    summary = {"depth_ratio_of": [int(low), int(high)], "linear_ratio": int(high) / int(low)}
    for code in ("first", "before_first"):
        if code in runs[high]:
            summary[f"{code}_depth_ratio"] = runs[high][code]["seconds_per_volume"] / runs[low][code]["seconds_per_volume"]
    if "before_first" in runs[high]:
        summary["speedup_at_deepest"] = runs[high]["before_first"]["seconds_per_volume"] / \
            runs[high]["first"]["seconds_per_volume"]
    seconds = runs[high]["first"]["seconds_per_volume"]
    summary["targets"] = {
        "seconds_per_volume": {"target": TARGET_SECONDS_PER_VOLUME, "measured": seconds,
                               "met": seconds < TARGET_SECONDS_PER_VOLUME,
                               "applies": report["size"] == 512 and int(high) == 256},
        "depth_ratio": {"target": TARGET_DEPTH_RATIO, "measured": summary["first_depth_ratio"],
                        "met": summary["first_depth_ratio"] < TARGET_DEPTH_RATIO,
                        "applies": (int(low), int(high)) == (64, 256)},
    }
    part = report["breakdown"]["seconds"]
    summary["png_share_of_a_volume"] = part["png_encoding"] / seconds
    return summary


# ------------------------------------------------------------------------------------------------ report
def _seconds(value: float) -> str:
    if value < 0.01:
        return f"{value * 1000:.1f} ms"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def _verdict(target: dict) -> str:
    if not target["applies"]:
        return "not measured at the issue's sizes"
    return "**met**" if target["met"] else "**not met**"


def render_section(report: dict) -> str:
    runs, summary = report["depths_measured"], report["summary"]
    ref = report["before_ref"]
    lines = [
        MARK_BEGIN, "## Ingestion of volumes", "",
        f"Generated by `python benchmarks/ingestion.py --report` from `benchmarks/results/ingestion.json`, measured "
        f"with `{report['command']}` on {report['machine']}: {report['volumes']} synthetic {report['size']} x "
        f"{report['size']} x D CT volumes per depth (gzip NIfTI, flipped on reading; with a 16 x 16 x 4 test split "
        f"whose time counts), "
        + (f"CT window {report['window']}" if report["window"] else "intensities scaled by the default rule "
           "(percentiles over each volume)")
        + f", label resolution {report['label_size']}; each code in a process of its own, one thread."
        + (f" `before` is the code of {ref} (slices cut with `np.take`) on {report['before_volumes']} of the "
           "volumes." if ref else "")
        + " The machine's 1-minute load average as each code's process started and ended: "
        + "; ".join(f"{code} {start:.1f} and {end:.1f}" for code, (start, end) in report["load_average"].items())
        + ".", "",
        "| depth | code | volumes | rows | seconds per volume | slices/s | rows/s | cache per volume | check, first | "
        "re-start, all volumes: load | re-start: check |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"before_first": f"before ({ref})", "first": "after", "num_proc": f"after, num_proc {report['num_proc']}"}
    for depth in report["depths"]:
        entries = runs[str(depth)]
        for name in ("before_first", "first", "num_proc"):
            if name not in entries:
                continue
            entry = entries[name]
            restart = entries.get(name.replace("first", "restart")) if name != "num_proc" else None
            check = _seconds(entry["check_seconds"]) if "check_seconds" in entry else "-"
            lines.append(
                f"| {depth} | {labels[name]} | {entry['volumes']} | {entry['rows']} | "
                f"{_seconds(entry['seconds_per_volume'])} | {entry['slices_per_s']:.1f} | {entry['rows_per_s']:.1f} | "
                f"{_mib(entry['cache_bytes'] / entry['volumes'])} | {check} | "
                f"{_seconds(restart['seconds']) if restart else '-'} | "
                f"{_seconds(restart['check_seconds']) if restart else '-'} |")
    low, high = summary["depth_ratio_of"]
    targets = summary["targets"]
    growth = f"Seconds per volume at depth {high} over depth {low}: after **{summary['first_depth_ratio']:.2f}**"
    if "before_first_depth_ratio" in summary:
        speedup = summary["speedup_at_deepest"]
        growth += (f", before {summary['before_first_depth_ratio']:.2f}; {speedup:.{0 if speedup >= 10 else 1}f}x "
                   f"faster at depth {high}")
    lines += [
        "", growth + f" (time linear in depth gives {summary['linear_ratio']:.0f}).",
        f"Targets: a 512 x 512 x 256 volume in under {targets['seconds_per_volume']['target']:.0f} s on one core: "
        f"{_verdict(targets['seconds_per_volume'])} ({_seconds(targets['seconds_per_volume']['measured'])}); depth "
        f"256 over 64 under {targets['depth_ratio']['target']:.0f}: {_verdict(targets['depth_ratio'])} "
        f"({targets['depth_ratio']['measured']:.2f}).",
    ]
    part = report["breakdown"]
    seconds = part["seconds"]
    used, default = part["png_by_level"][str(part["png_level"])], part["png_by_level"][str(PIL_PNG_LEVEL)]
    lines += [
        "", f"Where one {report['size']} x {report['size']} x {part['depth']} volume's time goes (current code, "
        f"apart from `datasets` writing the rows): reading the image {_seconds(seconds['read_image'])} and the label "
        f"map {_seconds(seconds['read_label_map'])}, listing its labels {_seconds(seconds['list_labels'])}, scaling "
        f"the intensities {_seconds(seconds['scale_percentiles'])} by percentiles "
        f"({_seconds(seconds['scale_ct_window'])} with the CT window {CT_WINDOW}), PNG encoding of its "
        f"{part['images']} slice images and {part['masks']} masks {_seconds(used['seconds'])} at zlib level "
        f"{part['png_level']}, {_mib(used['bytes'])} ({summary['png_share_of_a_volume']:.0%} of the volume's "
        f"ingestion); at PIL's default level {PIL_PNG_LEVEL}, what `datasets.Image` writes for an array and the code "
        f"before stored, {_seconds(default['seconds'])} for {_mib(default['bytes'])}.", MARK_END,
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, report_path: Path) -> None:
    write_section(report_path, render_section(report), MARK_BEGIN, MARK_END)
    print(f"[ingestion] report in {report_path}", flush=True)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child is not None:
        measure_in_child(json.loads(args.child))
        return None
    if args.report:
        path = args.output or RESULT
        if not path.is_file():
            raise SystemExit(f"No {path}: run the benchmark first.")
        write_report(json.loads(path.read_text()), args.report_path or DEFAULT_REPORT)
        return None
    report = run_benchmark(args, sys.argv[1:] if argv is None else argv)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=1))
    report_path = args.report_path or (None if args.smoke else DEFAULT_REPORT)
    if report_path is not None:
        write_report(report, report_path)
    return report


if __name__ == "__main__":
    main()
