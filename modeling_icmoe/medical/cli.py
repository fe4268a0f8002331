"""`icmoe-sam`, the command installed with the package.

    icmoe-sam predict --model DIR --input CT.nii.gz --output PRED.nii.gz --prompt_labels COARSE.nii.gz
    icmoe-sam predict --model DIR --input MR.nii.gz --output PRED.nii.gz --boxes boxes.json --reference GT.nii.gz
    icmoe-sam predict --model DIR --input CT.nii.gz --output PRED.nii.gz --boxes KEY.json --propagate --points POINTS.json
    icmoe-sam predict --model DIR --input SERIES_FOLDER/ --output PRED_SEG.dcm --prompt_labels COARSE_SEG.dcm
    icmoe-sam predict --model ORGANS_DIR --input CT.nii.gz --output PRED.nii.gz --window soft_tissue --reference GT.nii.gz
    icmoe-sam export --model DIR --output DIR_ONNX --format onnx
    icmoe-sam app --model DIR

`app` serves the interactive app in a browser (see `app.py`; needs `pip install "icmoe-sam[app]"`).

`export` writes ONNX files of a trained model, prompted or prompt-free (see `export.py`).

`predict` segments a volume (NIfTI, or a folder holding one DICOM series) slice by slice and writes the label map with
the input's shape, affine and header (NIfTI), or as a DICOM SEG referencing the input series (`--output` ending in
`.dcm`). A prompted model (`icmoe_sam`, `sam`) needs one box prompt per class and slice: from a label map such as an
earlier reader's coarse segmentation (NIfTI or DICOM SEG), or given as JSON; with `--propagate` the JSON boxes are
key-slice boxes, propagated through the volume (`propagation.py`), and `--points` clicks refine slices. A prompt-free model
(`icmoe_sam_semantic`, `IcMoeSamForSemanticSegmentation`) takes no prompt: every slice is segmented into all of its
classes (the argmax over them), named from its `id2label`. With `--reference`, the prediction is also scored per
class in millimetres; a class absent from both the prediction and the reference is not counted, one predicted but
absent from the reference scores Dice 0 (docs/METRICS.md). `--keep_largest_component` keeps each class's largest 3-D
connected component; it is off by default: on the volumetric benchmark it changed Dice by less than the seed
spread (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..imaging import resolve_window
from .checkpoint import (  # noqa: F401 (PROMPTED_MODEL_TYPES: still importable from here)
    PROMPTED_MODEL_TYPES,
    SEMANTIC_MODEL_TYPE,
    load_model,
    model_config,
    training_record,
)
from .prompts import check_key_prompts, points_from_entries
from .volumes import (
    is_nifti,
    keep_largest_component,
    label_values,
    load_label_map,
    load_volume,
    prompts_from_boxes,
    prompts_from_label_map,
    resolve_slice_axis,
    save_label_map,
    segment_volume,
    segment_volume_without_prompts,
)

# The scores' default file is the output's whole name plus this, so a NIfTI and a SEG output of one input keep theirs.
METRICS_SUFFIX = ".metrics.json"


def _predict_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="Segment a volume slice by slice: box prompts per class, or every class of a prompt-free model.",
        description="Segment a volume (NIfTI or a DICOM series) slice by slice and write the label map at the input's "
                    "geometry: a prompted model with one box prompt per class and slice, a prompt-free model with no "
                    "prompt (every class of the model on every slice).",
    )
    parser.add_argument("--model", required=True, help="A trained model folder (training/run.py's output) or Hub id.")
    parser.add_argument("--input", required=True, help="The volume: .nii / .nii.gz, or a folder of one DICOM series.")
    parser.add_argument("--output", required=True,
                        help="The predicted label map: .nii / .nii.gz, or .dcm for a DICOM SEG (DICOM input only).")
    prompts = parser.add_mutually_exclusive_group()  # required for prompted models, refused for prompt-free ones
    prompts.add_argument("--prompt_labels",
                         help="Prompted models: a label map on the input's grid (NIfTI or DICOM SEG), each class's box "
                              "in each slice.")
    prompts.add_argument("--boxes", help='Prompted models: a JSON list of {"slice": s, "label": l, "box": [x0, y0, x1, '
                                         'y1]} in the pixels of canonical (RAS) slices along --slice_axis.')
    parser.add_argument("--propagate", action="store_true",
                        help="Prompted models: read the --boxes entries as key-slice boxes (one or more per class) and "
                             "propagate each class from them through the volume, both ways, until the object ends or "
                             "the class's next key slice.")
    parser.add_argument("--points", default=None,
                        help='With --propagate: a JSON list of {"slice": s, "label": l, "point": [x, y], "positive": '
                             'true|false} clicks (the frame of --boxes) that refine their slice; propagation reruns '
                             "from it. Each clicked class needs a key box.")
    parser.add_argument("--label_ids", type=int, nargs="+", default=None,
                        help="With --prompt_labels: the classes to segment (default: every non-zero label). With a "
                             "prompt-free model: the classes to write (default: all of the model's); the others are "
                             "written as background.")
    parser.add_argument("--keep_largest_component", action="store_true",
                        help="Keep only each class's largest 3-D connected component (26-connectivity), the rest "
                             "becoming background. Off by default: on the volumetric benchmark it changed Dice by less than "
                             "the seed spread.")
    parser.add_argument("--slice_axis", default=None,
                        help="axial, coronal, sagittal or 0/1/2 (canonical axes). Default: the axis the model was "
                             "trained on (eval_results.json of --model), else axial.")
    parser.add_argument("--window", nargs="+", default=None,
                        help="CT window preset or LEVEL WIDTH. Default: the window the model was trained with "
                             "(eval_results.json of --model), else percentiles over the volume.")
    parser.add_argument("--batch_size", type=int, default=8, help="Slices per forward pass.")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... Default: cuda when available.")
    parser.add_argument("--reference", default=None,
                        help="A ground-truth label map (NIfTI or DICOM SEG): score the prediction per class.")
    parser.add_argument("--nsd_tolerance_mm", type=float, default=1.0, help="Tolerance of the surface Dice.")
    parser.add_argument("--metrics_output", default=None,
                        help="Where to write the scores as JSON, with --reference (default: beside --output, its "
                             f"whole file name plus {METRICS_SUFFIX}: PRED.nii.gz gives PRED.nii.gz{METRICS_SUFFIX}, "
                             f"PRED.dcm gives PRED.dcm{METRICS_SUFFIX}).")
    parser.set_defaults(handler=predict)


def _check_paths(args: argparse.Namespace) -> None:
    if not (os.path.isdir(args.input) or is_nifti(args.input)):
        raise ValueError(f"--input {args.input}: expected a NIfTI file (.nii, .nii.gz) or a DICOM series folder.")
    dicom_output = str(args.output).lower().endswith(".dcm")
    if not (is_nifti(args.output) or dicom_output):
        raise ValueError(f"--output {args.output}: expected .nii, .nii.gz or .dcm (DICOM SEG).")
    if dicom_output and not os.path.isdir(args.input):
        raise ValueError("--output .dcm writes a DICOM SEG, which references a DICOM series: give --input as a series folder.")
    for name in ("prompt_labels", "reference"):
        value = getattr(args, name)
        if value is not None and not (is_nifti(value) or str(value).lower().endswith(".dcm")):
            raise ValueError(f"--{name} {value}: expected a NIfTI label map or a DICOM SEG (.dcm).")
    if args.batch_size <= 0:
        raise ValueError(f"--batch_size must be positive, got {args.batch_size}.")


def _check_prompts(args: argparse.Namespace, config: dict) -> dict[int, str]:
    """Prompts required for prompted models and refused for prompt-free ones; `--label_ids` checked against the
    model's classes. Returns a prompt-free model's foreground classes (`{id: name}`), else `{}`."""
    given = [f"--{name} {getattr(args, name)}" for name in ("prompt_labels", "boxes", "points")
             if getattr(args, name)] + (["--propagate"] if args.propagate else [])
    if config["model_type"] != SEMANTIC_MODEL_TYPE:
        if not (args.prompt_labels or args.boxes):
            raise ValueError(
                f"--model {args.model} is a prompted `{config['model_type']}` model: give its prompts with "
                "--prompt_labels or --boxes (only a prompt-free `icmoe_sam_semantic` model segments without them)."
            )
        if args.boxes and args.label_ids:
            raise ValueError("--label_ids chooses classes of --prompt_labels; with --boxes, give only the boxes you "
                             "want.")
        if args.propagate and not args.boxes:
            raise ValueError("--propagate reads the --boxes entries as key slices; --prompt_labels gives a box on "
                             "every slice already: give --boxes KEY.json instead.")
        if args.points and not args.propagate:
            raise ValueError(f"--points {args.points} refines a propagation: add --propagate (with --boxes KEY.json).")
        return {}
    classes = {int(index): str(name) for index, name in config["id2label"].items() if int(index) != 0}
    if given:
        raise ValueError(
            f"--model {args.model} is a prompt-free model that segments all of its classes ({classes}) without "
            f"prompts; remove {' and '.join(given)}."
        )
    # Written and scored as the label values the model was trained on (`label_values`), where those differ from ids.
    values = config.get("label_values") or list(range(len(config["id2label"])))
    classes = {values[index]: name for index, name in classes.items()}
    unknown = sorted(set(args.label_ids or ()) - set(classes))
    if unknown:
        raise ValueError(f"--label_ids {unknown}: --model {args.model} has no such class (its classes by label value: "
                         f"{classes}; 0 is the background).")
    return {label: classes[label] for label in args.label_ids} if args.label_ids else classes


def predict(args: argparse.Namespace) -> dict:
    _check_paths(args)
    config = model_config(args.model)
    classes = _check_prompts(args, config)
    record = training_record(args.model)
    if args.slice_axis is None:
        args.slice_axis = record.get("slice_axis", "axial")
    axis = resolve_slice_axis(args.slice_axis)
    if record.get("slice_axis") is not None and resolve_slice_axis(record["slice_axis"]) != axis:
        print(f"Warning: --slice_axis {args.slice_axis} (canonical axis {axis}) is not the axis --model {args.model} "
              f"was trained on ({record['slice_axis']}); its slices may look unlike its training data.",
              file=sys.stderr)
    if args.window:
        window = resolve_window(args.window)
    else:
        window = resolve_window(record["window"]) if record.get("window") is not None else None
    print(f"Slicing along canonical axis {axis}; intensities: "
          + (f"CT window level {window[0]:g}, width {window[1]:g}." if window else "percentiles 0.5-99.5 of the volume."))
    volume = load_volume(args.input)
    reference = load_label_map(args.reference, volume) if args.reference else None  # fail before the slow part
    if config["model_type"] == SEMANTIC_MODEL_TYPE:
        prediction = _predict_without_prompts(args, volume, axis, window, classes)
    else:
        prediction = _predict_with_prompts(args, volume, axis, window, record)
    labels = prediction.labels
    if args.keep_largest_component:
        labels = keep_largest_component(labels, prediction.classes)
    written = save_label_map(labels, volume, args.output, prediction.label_names)
    print(f"Wrote {written} ({prediction.summary}).")
    if reference is None:
        return {}
    return _score(args, labels, reference, prediction.classes, prediction.label_names)


@dataclass
class _Prediction:
    """A predicted canonical label map, the names of its labels, the classes segmented, and a line about it."""

    labels: np.ndarray
    label_names: dict[int, str]
    classes: list[int]
    summary: str


def _predict_with_prompts(args, volume, axis: int, window, record: dict):
    label_names = {int(k): str(v) for k, v in record.get("label_names", {}).items()}
    if args.prompt_labels:
        prompt_labels = load_label_map(args.prompt_labels, volume)
        label_names.update(prompt_labels.label_names or {})
        prompts = prompts_from_label_map(prompt_labels, axis, args.label_ids)
    else:
        prompts = prompts_from_boxes(_json_list(args.boxes, "--boxes"), volume, axis, source=args.boxes)
    points = []
    if args.points:
        points = points_from_entries(_json_list(args.points, "--points"), volume, axis, source=args.points)
        check_key_prompts(prompts, points, num_slices=volume.num_slices(axis), slice_shape=volume.slice(axis, 0).shape)
    if not prompts:
        raise ValueError(f"No prompt: {args.boxes or args.prompt_labels} has none of the chosen labels in any slice.")
    model, processor = load_model(args.model, args.device)
    labels = segment_volume(
        model, processor, volume, prompts, axis=axis, window=window, slices_per_batch=args.batch_size,
        propagate=args.propagate, points=points,
    )
    summary = f"{len(prompts)} prompts in {len({p.index for p in prompts})} slices"
    if args.propagate:
        summary = (f"{len(prompts)} key boxes and {len(points)} points propagated to "
                   f"{int(np.any(labels != 0, axis=tuple(i for i in range(3) if i != axis)).sum())} slices")
    return _Prediction(labels, label_names, sorted({p.label for p in prompts}), summary)


def _json_list(path: str, option: str) -> list:
    """The JSON list in the file `path` of `option`."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{option} {path}: cannot be read as JSON ({err}).") from err
    if not isinstance(entries, list):
        raise ValueError(f"{option} {path}: expected a JSON list of entries, got {type(entries).__name__}.")
    return entries


def _predict_without_prompts(args, volume, axis: int, window, classes: dict[int, str]):
    model, processor = load_model(args.model, args.device)
    labels = segment_volume_without_prompts(
        model, processor, volume, axis=axis, window=window, slices_per_batch=args.batch_size
    )
    if model.config.label_values is not None:  # class ids to the label values of the training data
        labels = np.asarray(model.config.label_values, dtype=np.int32)[labels]
    if args.label_ids:  # the classes not chosen are written as background
        labels[~np.isin(labels, list(classes))] = 0
    present = [classes[v] for v in label_values(labels) if v != 0]
    return _Prediction(labels, classes, sorted(classes), f"{volume.num_slices(axis)} slices without prompts; classes "
                                                         f"predicted: {', '.join(present) or 'none'}")


def _score(args, labels, reference, classes: list[int], label_names: dict[int, str]) -> dict:
    """Scores each class of `classes` in mm. A class absent from both the prediction and the reference is not counted;
    one absent from the reference but predicted scores as a false positive (Dice 0), and is listed."""
    from .volume_metrics import score_volume

    scores, not_counted, absent_in_reference = {}, [], []
    for label in classes:
        predicted, expected = labels == label, reference.data == label
        if not predicted.any() and not expected.any():
            not_counted.append(label)
            continue
        if not expected.any():
            absent_in_reference.append(label)
        scores[str(label)] = {k: round(float(v), 5) for k, v in score_volume(
            predicted, expected, reference.spacing, nsd_tolerance_mm=args.nsd_tolerance_mm
        ).items()}
    unscored = [v for v in label_values(reference.data) if v != 0 and v not in classes]
    result = {"input": args.input, "reference": args.reference, "nsd_tolerance_mm": args.nsd_tolerance_mm,
              "units": "hd95 in mm", "per_class": scores,
              "label_names": {label: label_names[int(label)] for label in scores if int(label) in label_names},
              "absent_in_reference": absent_in_reference, "not_counted": not_counted,
              "reference_labels_not_scored": unscored}
    output = Path(args.metrics_output or f"{args.output}{METRICS_SUFFIX}")
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for label, values in scores.items():
        name = f" ({label_names[int(label)]})" if int(label) in label_names else ""
        print(f"label {label}{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    if absent_in_reference:
        print(f"Predicted but absent from the reference (scored as false positives): {absent_in_reference}.")
    if not_counted:
        print(f"Absent from both the prediction and the reference (not counted): {not_counted}.")
    if unscored:
        print(f"Reference labels that were not segmented (not scored): {unscored}.")
    print(f"Wrote {output}.")
    return result


def _export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="Export a trained model to ONNX (image encoder with the experts, prompt decoders; or one "
                       "graph for a prompt-free model).",
        description="Export a model to ONNX. A prompted model as SAM deployments split it: the image encoder (with the "
                    "IC-MoE experts and routing) and the prompt-encoder-plus-mask-decoder for boxes and for points; a "
                    "prompt-free model as one graph from pixel values to class logits. Each part is checked against "
                    "PyTorch with onnxruntime; a model that does not export faithfully is refused.",
    )
    parser.add_argument("--model", required=True, help="A trained model folder (training/run.py's output) or Hub id.")
    parser.add_argument("--output", required=True, help="A new (or empty) folder for the ONNX files.")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="Export format.")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version.")
    parser.set_defaults(handler=export)


def export(args: argparse.Namespace) -> dict:
    from .export import export_onnx

    model, processor = load_model(args.model, "cpu")
    report = export_onnx(model, processor, args.output, opset=args.opset, source=args.model)
    worst = max(part["max_difference"] for part in report["parts"].values())
    print(f"Wrote {args.output} ({', '.join(p['file'] for p in report['parts'].values())}); largest difference from "
          f"PyTorch {worst:.2e}.")
    return report


def _app_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "app", help="Serve the interactive app: prompt images and volumes in a browser, propagate, export.",
        description="Serve a Gradio app for a model: open a 2-D image or a volume, draw boxes and click points (or "
                    "segment everything with a prompt-free model), propagate through the volume, and download the "
                    "result as PNG, NIfTI or DICOM SEG. Needs pip install \"icmoe-sam[app]\".",
    )
    parser.add_argument("--model", required=True, help="A trained model folder (training/run.py's output) or Hub id.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0 for every interface).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: Gradio's, 7860 or the next free one).")
    parser.add_argument("--slice_axis", default=None, help="As for predict: default, the axis the model was trained on.")
    parser.add_argument("--window", nargs="+", default=None,
                        help="As for predict: CT window preset or LEVEL WIDTH; default, the model's training window.")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... Default: cuda when available.")
    parser.set_defaults(handler=app)


def app(args: argparse.Namespace) -> None:
    from .app import launch_app

    launch_app(args.model, host=args.host, port=args.port, device=args.device, window=args.window,
               slice_axis=args.slice_axis)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="icmoe-sam", description="IC-MoE SAM for medical image segmentation.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _predict_parser(subparsers)
    _export_parser(subparsers)
    _app_parser(subparsers)
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, ImportError, OSError) as err:  # bad input, a missing optional package, an unwritable path
        print(f"icmoe-sam {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
