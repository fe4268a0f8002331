"""Propagation of key-slice boxes through a volume (issue 24), on the volumetric task `training/data/ct_abdomen_volumes`
(simulated anisotropic CT, five organs), with the prompted IC-MoE.

1. Choice on validation: a prompted IC-MoE trains on the training volumes less a seeded hold-out of whole volumes
   (`semantic_volumes.validation_csv`: 3 volumes); on the held-out volumes, every combination of prompt use (box;
   box + previous mask logits; box + interior point), stop threshold on the predicted IoU, stop threshold on the area
   (a fraction of the key slice's) and box margin is scored with one key box per class (on the slice of largest
   area, and on a slice of median area). The combination of highest mean Dice is kept.
2. Test: per seed, a prompted IC-MoE trained on every training volume (the run `benchmarks/semantic_volumes.py`
   made as `icmoe_prompted`, reused when its settings match; trained here otherwise) segments each test volume with:
   per-slice boxes from the labels (the upper bound: one prompt per class and slice); one key box per class on the
   slice of largest area; one on a slice of median area; three key boxes per class (at 1/6, 3/6 and 5/6 of its labelled
   slices); each of the key-box settings also after one simulated round of corrective clicks (per class, one click
   in the largest error region of the slice with the most wrong pixels: positive on a missed region, negative on a
   false one). Per-class, per-volume Dice over the whole volume; prompt counts; the wall time of propagation (one key
   box per class) against per-slice prompting, both from the raw volume, measured alternately on the same volumes.

    python benchmarks/propagation.py
    python benchmarks/propagation.py --smoke --work_dir /tmp/prop     # a tiny run that checks the script

Results go to `benchmarks/results/propagation.json` (or `--output`), saved after each stage; a restart reuses them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.harness import machine, portable, save  # noqa: E402
from benchmarks.semantic_volumes import TASK, WINDOW, cases, validation_csv  # noqa: E402
from modeling_icmoe.imaging import resolve_window  # noqa: E402
from modeling_icmoe.run_folder import RUN_MANIFEST  # noqa: E402
from training.arguments import DEFAULT_BASE_MODEL  # noqa: E402

LEVEL_WIDTH = resolve_window(WINDOW)

GRID = {
    "prompt_use": ["box", "box+mask", "box+point"],
    "min_score": [0.0, 0.5, 0.6, 0.65, 0.7],
    "min_area_ratio": [0.0, 0.1, 0.25],
    "box_margin": [0.0, 0.1, 0.2],
}
KEY_SETTINGS = ("largest", "median", "three")
TIMING_REPEATS = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", default=str(DEFAULT_BASE_MODEL))
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--max_train_steps", type=int, default=600)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_prompt", default="box", choices=["box", "box+point"],
                        help="The prompts the models train with (`training/run.py --prompt`): box, as the reused runs, "
                             "or box+point, which also shows the model a positive point inside the object.")
    parser.add_argument("--reuse_runs", type=Path,
                        default=REPO_ROOT / "benchmarks" / ".cache" / "semantic_volumes" / "runs" / "icmoe_prompted",
                        help="Folder of `seed{N}` test runs to reuse when their training settings match.")
    parser.add_argument("--work_dir", type=Path, default=REPO_ROOT / "benchmarks" / ".cache" / "propagation")
    parser.add_argument("--output", type=Path, default=None,
                        help="Default: benchmarks/results/propagation.json (box), propagation_box_point.json (box+point).")
    parser.add_argument("--smoke", action="store_true", help="2 steps, one seed, one volume of each split, a tiny grid.")
    parser.add_argument("--report", action="store_true",
                        help="Only re-render the generated blocks of docs/BENCHMARKS.md and docs/METHOD.md from --output.")
    args = parser.parse_args(argv)
    args.command = ("python benchmarks/propagation.py " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    if args.smoke:
        args.max_train_steps, args.seeds, args.reuse_runs = 2, [0], None
    args.work_dir = args.work_dir.resolve()
    if args.output is None:
        suffix = "" if args.train_prompt == "box" else "_" + args.train_prompt.replace("+", "_")
        args.output = REPO_ROOT / "benchmarks" / "results" / f"propagation{suffix}.json"
    args.runs = args.work_dir / "runs" / ("" if args.train_prompt == "box" else args.train_prompt.replace("+", "_"))
    return args


def train(args, argv: list[str], output_dir: Path) -> None:
    from training.arguments import parse_args as run_args
    from training.loop import run

    run(run_args(["--base_model", args.base_model, "--window", WINDOW, "--prompt", args.train_prompt, "--max_train_steps",
                  str(args.max_train_steps), "--per_device_train_batch_size", str(args.per_device_train_batch_size),
                  "--learning_rate", repr(args.learning_rate), "--num_example_figures", "0",
                  "--dataloader_num_workers", "0", "--no_zeroshot_eval", "--output_dir", str(output_dir), *argv]))


def matches(run_dir: Path, args, seed: int) -> bool:
    """Whether `run_dir` holds a finished prompted run of these settings on the whole task."""
    record = run_dir / RUN_MANIFEST
    if not (record.is_file() and (run_dir / "model.safetensors").is_file()):
        return False
    settings = json.loads(record.read_text())["fingerprint"]
    wanted = {"prompt": args.train_prompt, "train_steps": args.max_train_steps, "learning_rate": args.learning_rate, "seed": seed,
              "per_device_train_batch_size": args.per_device_train_batch_size, "window": [40.0, 400.0],
              "dataset": str(TASK)}
    return all(settings.get(k) == v for k, v in wanted.items())


def test_model(args, seed: int) -> Path:
    reused = args.reuse_runs / f"seed{seed}" if args.reuse_runs else None
    if reused is not None and matches(reused, args, seed):
        return reused
    run_dir = args.runs / f"test_seed{seed}"
    if not matches(run_dir, args, seed):
        train(args, ["--dataset", str(TASK), "--seed", str(seed)], run_dir)
    return run_dir


# ------------------------------------------------------------------------------------------------ prompts and scores
def class_slices(labels: np.ndarray, label: int) -> tuple[list[int], list[int]]:
    """The axial slices holding `label` and its area in each."""
    areas = (labels == label).sum(axis=(0, 1))
    present = np.flatnonzero(areas).tolist()
    return present, [int(areas[i]) for i in present]


def key_prompts(labels: np.ndarray, setting: str):
    """Key boxes from the labels: per class, the slice of largest area, a slice of median area, or three slices."""
    from modeling_icmoe.imaging import mask_box
    from modeling_icmoe.medical.volumes import SlicePrompt

    prompts = []
    for label in range(1, int(labels.max()) + 1):
        present, areas = class_slices(labels, label)
        if not present:
            continue
        if setting == "largest":
            chosen = [present[int(np.argmax(areas))]]
        elif setting == "median":
            chosen = [present[int(np.argsort(areas)[len(areas) // 2])]]
        else:
            chosen = sorted({present[min(len(present) - 1, int(q * len(present)))] for q in (1 / 6, 3 / 6, 5 / 6)})
        prompts += [SlicePrompt(i, label, mask_box(labels[:, :, i] == label)) for i in chosen]
    return prompts


def dice_per_class(prediction: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    scores = {}
    for label in range(1, int(labels.max()) + 1):
        predicted, expected = prediction == label, labels == label
        total = predicted.sum() + expected.sum()
        scores[str(label)] = round(float(2 * (predicted & expected).sum() / total), 5) if total else 1.0
    return scores


def corrective_clicks(prediction: np.ndarray, labels: np.ndarray):
    """One click per class: in the slice with the most wrong pixels, at the most interior pixel of its largest error
    region, positive where the class was missed, negative where it was wrongly predicted."""
    from scipy import ndimage

    from modeling_icmoe.medical.propagation import SlicePoint, _interior_point

    clicks = []
    for label in range(1, int(labels.max()) + 1):
        predicted, expected = prediction == label, labels == label
        wrong = (predicted ^ expected).sum(axis=(0, 1))
        if not wrong.any():
            continue
        index = int(np.argmax(wrong))
        best = None
        for region, positive in ((expected[:, :, index] & ~predicted[:, :, index], True),
                                 (predicted[:, :, index] & ~expected[:, :, index], False)):
            components, count = ndimage.label(region)
            if count:
                sizes = np.bincount(components.ravel())[1:]
                if best is None or sizes.max() > best[0]:
                    best = (int(sizes.max()), components == 1 + int(np.argmax(sizes)), positive)
        x, y = _interior_point(best[1])
        clicks.append(SlicePoint(index, label, [x, y], best[2]))
    return clicks


def mean_dice(records: list[dict], key: str = "dice") -> float:
    """Mean over classes of each class's mean over volumes (docs/METRICS.md's headline rule)."""
    by_class: dict[str, list[float]] = {}
    for record in records:
        for label, value in record[key].items():
            by_class.setdefault(label, []).append(value)
    return float(np.mean([np.mean(v) for v in by_class.values()]))


class Case:
    """A volume, its labels (canonical), its uint8 pixels and a lazily filled embedding cache for one model."""

    def __init__(self, image: Path, label: Path):
        from modeling_icmoe.medical.volumes import load_label_map, load_volume, to_uint8_volume

        self.name = image.name.removesuffix(".nii.gz")
        self.volume = load_volume(image)
        self.label_map = load_label_map(label, self.volume)
        self.labels = np.asarray(self.label_map.data)
        self.pixels = to_uint8_volume(self.volume, window=LEVEL_WIDTH)

    def propagate(self, model, processor, embeddings, settings, prompts, points=()):
        from modeling_icmoe.medical.volumes import segment_volume

        return segment_volume(model, processor, self.volume, prompts, axis=2, window=LEVEL_WIDTH, progress=False,
                              propagate=True, points=points, propagation=settings, embeddings=embeddings)


# --------------------------------------------------------------------------------------------------------- stages
def select(args, data: dict, grid: dict) -> dict:
    """Scores every settings combination of `grid` on the validation volumes; returns the best."""
    from modeling_icmoe.medical.cli import load_model
    from modeling_icmoe.medical.propagation import PropagationSettings, SliceEmbeddings

    split_csv, held_out = validation_csv(args.work_dir)
    run_dir = args.runs / "select_seed0"
    if not (run_dir / "model.safetensors").is_file():
        train(args, ["--dataset", str(split_csv), "--eval_split", "validation", "--seed", "0"], run_dir)
    model, processor = load_model(str(run_dir), "cpu")
    held = [Case(TASK / "imagesTr" / name, TASK / "labelsTr" / name) for name in held_out[: 1 if args.smoke else None]]
    embeddings = {case.name: SliceEmbeddings(model, processor, case.pixels, axis=2) for case in held}
    rows = []
    for values in itertools.product(*grid.values()):
        settings = PropagationSettings(**dict(zip(grid, values)))
        records = [{"dice": dice_per_class(case.propagate(model, processor, embeddings[case.name], settings,
                                                          key_prompts(case.labels, key)), case.labels)}
                   for case in held for key in ("largest", "median")]
        rows.append({**dict(zip(grid, values)), "dice": round(mean_dice(records), 5)})
    best = max(rows, key=lambda row: row["dice"])
    by_use = {use: max((r for r in rows if r["prompt_use"] == use), key=lambda r: r["dice"]) for use in grid["prompt_use"]}
    return {"validation_volumes": held_out, "run": portable(run_dir), "grid": grid, "scores": rows,
            "best_per_prompt_use": by_use, "chosen": {k: best[k] for k in grid}, "chosen_dice": best["dice"],
            "rule": "highest mean Dice over classes and volumes, one key box per class (largest and median slice)"}


def test_seed(args, seed: int, chosen: dict, volumes: list[tuple[Path, Path]]) -> dict:
    from modeling_icmoe.medical.cli import load_model
    from modeling_icmoe.medical.propagation import PropagationSettings, SliceEmbeddings
    from modeling_icmoe.medical.volumes import prompts_from_label_map, segment_volume

    run_dir = test_model(args, seed)
    model, processor = load_model(str(run_dir), "cpu")
    settings = PropagationSettings(**chosen)
    per_volume, timing = [], {"per_slice_seconds": 0.0, "propagation_seconds": 0.0}
    for image, label in volumes:
        case = Case(image, label)
        per_slice_prompts = prompts_from_label_map(case.label_map, 2)
        record = {"volume": case.name, "prompts": {"per_slice": len(per_slice_prompts)}}
        upper = segment_volume(model, processor, case.volume, per_slice_prompts, axis=2, window=LEVEL_WIDTH,
                               progress=False)
        record["dice"] = {"per_slice": dice_per_class(upper, case.labels)}
        embeddings = SliceEmbeddings(model, processor, case.pixels, axis=2)
        for key in KEY_SETTINGS:
            prompts = key_prompts(case.labels, key)
            predicted = case.propagate(model, processor, embeddings, settings, prompts)
            clicks = corrective_clicks(predicted, case.labels)
            corrected = case.propagate(model, processor, embeddings, settings, prompts, clicks)
            record["dice"][key] = dice_per_class(predicted, case.labels)
            record["dice"][f"{key}+click"] = dice_per_class(corrected, case.labels)
            record["prompts"][key] = len(prompts)
            record["prompts"][f"{key}+click"] = len(prompts) + len(clicks)
        # Alternately, from the raw volume (intensity scaling, every encoder pass) to the label map.
        key = key_prompts(case.labels, "largest")
        for _ in range(TIMING_REPEATS):
            for name, call in (("per_slice_seconds", lambda: segment_volume(
                    model, processor, case.volume, per_slice_prompts, axis=2, window=LEVEL_WIDTH,
                    progress=False)),
                               ("propagation_seconds", lambda: segment_volume(
                    model, processor, case.volume, key, axis=2, window=LEVEL_WIDTH, progress=False,
                    propagate=True, propagation=settings))):
                start = time.perf_counter()
                call()
                timing[name] += (time.perf_counter() - start) / TIMING_REPEATS
        per_volume.append(record)
    summary = {name: round(mean_dice([{"dice": r["dice"][name]} for r in per_volume]), 5)
               for name in per_volume[0]["dice"]}
    return {"seed": seed, "run": portable(run_dir), "per_volume": per_volume, "mean_dice": summary,
            "timing": {**{k: round(v, 4) for k, v in timing.items()},
                       "ratio": round(timing["propagation_seconds"] / timing["per_slice_seconds"], 4)}}


def summarise(data: dict) -> dict:
    seeds = list(data["test"].values())
    names = list(seeds[0]["mean_dice"])
    per_class = {}
    for name in names:
        values: dict[str, list[float]] = {}
        for seed in seeds:
            for record in seed["per_volume"]:
                for label, value in record["dice"][name].items():
                    values.setdefault(label, []).append(value)
        per_class[name] = {label: round(float(np.mean(v)), 4) for label, v in values.items()}
    dice = {n: {"mean": round(float(np.mean([s["mean_dice"][n] for s in seeds])), 4),
                "std": round(float(np.std([s["mean_dice"][n] for s in seeds])), 4)} for n in names}
    prompts = {n: int(sum(r["prompts"][n] for s in seeds[:1] for r in s["per_volume"])) for n in names}
    ratios = [s["timing"]["ratio"] for s in seeds]
    upper = dice["per_slice"]["mean"]
    return {
        "dice": dice, "dice_per_class": per_class, "prompts_over_test_volumes": prompts,
        "time_ratio_per_seed": ratios, "time_ratio": round(float(np.mean(ratios)), 4),
        "targets": {
            "one_key_box_within_0.05_of_per_slice": {k: round(upper - dice[k]["mean"], 4) <= 0.05
                                                     for k in ("largest", "median")},
            "gap_to_per_slice": {k: round(upper - dice[k]["mean"], 4) for k in ("largest", "median", "three")},
            "prompts_at_least_10x_fewer": {k: prompts["per_slice"] / prompts[k] >= 10 for k in names if k != "per_slice"},
            "prompt_reduction": {k: round(prompts["per_slice"] / prompts[k], 2) for k in names if k != "per_slice"},
            "click_round_raises_dice": {k: dice[f"{k}+click"]["mean"] > dice[k]["mean"] for k in KEY_SETTINGS},
            "cost_at_most_1.2x": float(np.mean(ratios)) <= 1.2,
        },
    }


# ------------------------------------------------------------------------------------------------------- reports
ROWS = [("per_slice", "per-slice boxes from the labels (upper bound)"), ("largest", "one key box, slice of largest area"),
        ("largest+click", "  + one click round"), ("median", "one key box, slice of median area"),
        ("median+click", "  + one click round"), ("three", "three key boxes"), ("three+click", "  + one click round")]
MARKERS = {"benchmarks": "propagation", "method": "propagation_choice"}


def markers(data: dict) -> dict[str, str]:
    """The names of a results file's generated blocks: `propagation`, `propagation_choice`, with `_box_point` for the
    models trained with box+point prompts."""
    prompt = data["settings"]["train_prompt"]
    suffix = "" if prompt == "box" else "_" + prompt.replace("+", "_")
    return {k: v + suffix for k, v in MARKERS.items()}


def _met(value: bool) -> str:
    return "met" if value else "**not met**"


def render_choice(data: dict) -> str:
    """The validation choice, for docs/METHOD.md's "Propagation through a volume"."""
    selection = data["selection"]
    chosen = selection["chosen"]
    lines = [f"Models trained with `--prompt {data['settings']['train_prompt']}`. "
             f"Validation volumes {', '.join(selection['validation_volumes'])} (held out of the training volumes; the "
             f"model trained on the other {len(cases(TASK / 'imagesTr')) - len(selection['validation_volumes'])}), one key box per class on the "
             "slice of largest and of median area, mean Dice over classes and volumes; the best stop thresholds and "
             "margin of each prompt use:", "",
             "| prompt use | min_score | min_area_ratio | box_margin | validation Dice |", "|---|---|---|---|---|"]
    for use, row in selection["best_per_prompt_use"].items():
        mark = "**" if use == chosen["prompt_use"] else ""
        lines.append(f"| {mark}{use}{mark} | {row['min_score']} | {row['min_area_ratio']} | {row['box_margin']} | "
                     f"{mark}{row['dice']:.4f}{mark} |")
    no_stop = [r for r in selection["scores"] if r["prompt_use"] == chosen["prompt_use"] and r["min_score"] == 0
               and r["min_area_ratio"] == 0 and r["box_margin"] == chosen["box_margin"]]
    kept = "Kept (the defaults of `PropagationSettings`)" if data["settings"]["train_prompt"] == "box" else "Best"
    lines += ["", f"{kept}: `prompt_use={chosen['prompt_use']!r}`, "
                  f"`min_score={chosen['min_score']}`, `min_area_ratio={chosen['min_area_ratio']}`, "
                  f"`box_margin={chosen['box_margin']}` (validation Dice {selection['chosen_dice']:.4f}"
              + (f"; without either stop {no_stop[0]['dice']:.4f}" if no_stop else "") + "). Grid: "
              + "; ".join(f"{k} {v}" for k, v in selection["grid"].items()) + "."]
    return "\n".join(lines)


def render_report(data: dict) -> str:
    """The results section of docs/BENCHMARKS.md."""
    summary, names = data["summary"], json.loads((TASK / "dataset.json").read_text())["labels"]
    seeds = list(data["test"])
    labels = list(summary["dice_per_class"]["per_slice"])
    prompts, dice = summary["prompts_over_test_volumes"], summary["dice"]
    lines = [f"`{data['task']}`, {len(data['test'][seeds[0]]['per_volume'])} test volumes, prompted IC-MoE "
             f"(stand-in SAM, trained with `--prompt {data['settings']['train_prompt']}`, "
             f"{data['settings']['max_train_steps']} steps, learning rate "
             f"{data['settings']['learning_rate']}), seeds {', '.join(seeds)}; propagation settings chosen on validation "
             "(docs/METHOD.md, \"Propagation through a volume\"). Dice per class and volume over the whole volume, "
             "mean over classes of the mean over volumes, mean ± std over seeds; per-class columns: mean over seeds "
             "and volumes. Prompts: boxes and clicks over the test volumes.", "",
             "| prompts | count | fewer than per-slice | Dice | gap to per-slice | "
             + " | ".join(names[label] for label in labels) + " |",
             "|---|---|---|---|---|" + "---|" * len(labels)]
    upper = dice["per_slice"]["mean"]
    for key, title in ROWS:
        reduction = "" if key == "per_slice" else f"{prompts['per_slice'] / prompts[key]:.1f}x"
        gap = "" if key == "per_slice" else f"{upper - dice[key]['mean']:+.3f}"
        lines.append(f"| {title.strip()} | {prompts[key]} | {reduction} | {dice[key]['mean']:.3f} ± "
                     f"{dice[key]['std']:.3f} | {gap} | "
                     + " | ".join(f"{summary['dice_per_class'][key][label]:.3f}" for label in labels) + " |")
    targets = summary["targets"]
    timing = {seed: data["test"][seed]["timing"] for seed in seeds}
    lines += ["", "| target | measured | |", "|---|---|---|",
              f"| one key box within 0.05 of per-slice boxes | gap {targets['gap_to_per_slice']['largest']:.3f} "
              f"(largest-area slice), {targets['gap_to_per_slice']['median']:.3f} (median) | "
              f"{_met(all(targets['one_key_box_within_0.05_of_per_slice'].values()))} |",
              f"| at least 10x fewer prompts | {targets['prompt_reduction']['largest']:.1f}x (one key box), "
              f"{targets['prompt_reduction']['largest+click']:.1f}x (with the click round), "
              f"{targets['prompt_reduction']['three']:.1f}x (three key boxes) | "
              f"{_met(targets['prompts_at_least_10x_fewer']['largest'])} for one key box |",
              "| one click round raises mean Dice | "
              + ", ".join(f"{dice[k + '+click']['mean'] - dice[k]['mean']:+.3f} ({k})" for k in KEY_SETTINGS)
              + f" | {_met(all(targets['click_round_raises_dice'].values()))} |",
              f"| propagation costs at most 1.2x per-slice prompting | {summary['time_ratio']:.2f}x (per seed: "
              + ", ".join(f"{r:.2f}" for r in summary["time_ratio_per_seed"]) + f") | "
              f"{_met(targets['cost_at_most_1.2x'])} |", "",
              "Time: one key box per class propagated against one box per class and slice, each from the raw volume "
              f"to the label map, alternating, {TIMING_REPEATS} times per test volume, torch on one thread, "
              f"{data['machine']}; seconds per test volume, propagation / per-slice: "
              + "; ".join(f"seed {seed} {t['propagation_seconds'] / len(data['test'][seed]['per_volume']):.3f} / "
                          f"{t['per_slice_seconds'] / len(data['test'][seed]['per_volume']):.3f}"
                          for seed, t in timing.items()) + ".", "", "```bash", *(c.strip() for c in data["commands"]), "```"]
    return "\n".join(lines)


def _replace_between(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"no {start} ... {end} block")
    head, rest = text.split(start, 1)
    return head + start + "\n" + body + "\n" + end + rest.split(end, 1)[1]


def write_reports(data: dict) -> None:
    """Re-renders the generated blocks of docs/BENCHMARKS.md and docs/METHOD.md (only those blocks)."""
    names = markers(data)
    for path, name, body in ((REPO_ROOT / "docs" / "BENCHMARKS.md", names["benchmarks"], render_report(data)),
                             (REPO_ROOT / "docs" / "METHOD.md", names["method"], render_choice(data))):
        path.write_text(_replace_between(path.read_text(encoding="utf-8"), name, body), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.report:
        data = json.loads(args.output.read_text())
        write_reports(data)
        return data
    torch.set_num_threads(1)  # timings on one core: the machine's other cores are shared
    data = json.loads(args.output.read_text()) if args.output.is_file() else {}
    settings = {"base_model": portable(args.base_model), "train_prompt": args.train_prompt,
                "learning_rate": args.learning_rate,
                "max_train_steps": args.max_train_steps, "per_device_train_batch_size": args.per_device_train_batch_size}
    if data.get("settings", settings) != settings:
        raise SystemExit(f"{args.output} was made with other settings {data['settings']}; use another --output.")
    data.update({"settings": settings, "window": WINDOW, "task": portable(TASK), "machine": machine(),
                 "torch_threads": 1})
    data["commands"] = list(dict.fromkeys(data.get("commands", []) + [args.command]))
    grid = {k: v[:2] for k, v in GRID.items()} if args.smoke else GRID
    if "selection" not in data:
        data["selection"] = select(args, data, grid)
        save(data, args.output)
    chosen = data["selection"]["chosen"]
    print(f"[propagation] chosen on validation: {chosen} (Dice {data['selection']['chosen_dice']:.4f})")
    volumes = cases(TASK / "imagesTs")[: 1 if args.smoke else None]
    test = data.setdefault("test", {})
    for seed in args.seeds:
        if str(seed) not in test:
            test[str(seed)] = test_seed(args, seed, chosen, volumes)
            save(data, args.output)
        print(f"[propagation] seed {seed}: {test[str(seed)]['mean_dice']}, time ratio {test[str(seed)]['timing']}")
    data["summary"] = summarise(data)
    save(data, args.output)
    print(json.dumps(data["summary"], indent=1))
    return data


if __name__ == "__main__":
    main()
