"""Volumes as training data: Decathlon / nnU-Net folders or a CSV of NIfTI pairs, cut into per-class 2-D samples.

Layouts:
- a folder with `imagesTr/` and `labelsTr/` (optional `imagesTs/` + `labelsTs/`, optional `dataset.json` naming the
  labels), as the Medical Segmentation Decathlon and nnU-Net lay data out. nnU-Net's channel suffix is understood
  (`case_0000.nii.gz` pairs with `labelsTr/case.nii.gz`); only channel `_0000` is read, and other channels are
  reported.
- a CSV file with the columns `image,label[,split]`, paths relative to the CSV's folder: NIfTI files, or a DICOM
  series folder with a NIfTI label map or a DICOM SEG (the SEGs' segment labels name the labels).

Each volume is read once (canonical orientation), brought to 8 bits with one rule for the whole volume (a CT
window, or percentiles over the volume: `modeling_icmoe.medical.volumes.to_uint8_volume`), cut along the slice axis, and
every chosen class present in a slice becomes one row: the slice, that class's binary mask, and where it came from
(`case`, `slice_index`, `label_id`, `label_name`, `spacing`). Slices are views of the volume (never a copy of
it per slice), and a slice's PNG is encoded once for all its classes. Rows are written to the `datasets` cache one
volume at a time, so no more than one volume per process is held in memory; with `num_proc`, processes slice shares
of the cases in parallel. Splits are made of whole volumes: no case is in two splits.

For the prompt-free model (`class_values`, from `--prompt none`) every slice is one row instead, its mask the
slice's class-id map (class `c` is the stored label value `class_values[c]`; values of no chosen class are background
when `--label_ids` chose the classes, and refused otherwise): a slice without any organ is an example too, and the
slices of a volume together give back the whole volume to score. A volume without one of the classes is counted and
named, not refused.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import random
from collections import Counter
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from datasets.fingerprint import Hasher
from PIL import Image

from modeling_icmoe.medical.dicom import dicom_seg_label_names, is_dicom_seg
from modeling_icmoe.medical.volumes import (
    is_nifti,
    label_values,
    load_label_map,
    load_volume,
    resolve_slice_axis,
    slice_view,
    to_uint8_volume,
)

from .data import survives_resize

VOLUME_COLUMNS = ("case", "slice_index", "label_id", "label_name", "spacing")
SLICING_VERSION = 3  # part of the cache key: raise it when what a slice row holds changes
CHANNEL_SUFFIX = "_0000"
CSV_SPLITS = ("train", "validation", "test")
# zlib level of the rows' PNGs: level 1 encodes a noisy 512 x 512 CT slice in about half the time of PIL's default (6)
# for about an eighth more bytes (benchmarks/ingestion.py); decoding gives the same pixels whatever the level.
PNG_COMPRESS_LEVEL = 1


@dataclass
class Case:
    name: str
    image: Path
    label: Path


@dataclass
class VolumeDataSummary:
    """What the slicing did, per split: volumes, rows (one per class and slice) and slices without a chosen class."""

    slice_axis: int
    window: object
    label_names: dict[int, str]
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    class_maps: bool = False  # one row per slice with its class-id map (the prompt-free model)

    def report_lines(self, *, truncated: bool = False) -> list[str]:
        """What to print before training: the notes, and per split what was kept and what was not used."""
        lines = list(self.notes)
        if truncated:
            lines.append("--max_train_samples / --max_eval_samples keep the first rows: per-volume scores then cover "
                         "only the slices kept, not whole volumes.")
        if self.class_maps:
            return lines + [
                f"{split}: {c['volumes']} volumes, {c['rows']} slices with their class-id maps "
                f"({c['slices_without_label']} without any class); {c['volumes_missing_a_class']} (volume, class) "
                "pairs where the class is absent."
                for split, c in self.splits.items()
            ]
        lines += [
            f"{split}: {c['volumes']} volumes, {c['rows']} (slice, class) prompts; not used: {c['slices_without_label']} "
            f"slices without a chosen label, {c['objects_too_small']} objects too small for SAM's label resolution."
            for split, c in self.splits.items()
        ]
        return lines

    def to_dict(self) -> dict:
        return {
            "slice_axis": self.slice_axis,
            "window": self.window,
            "label_names": {str(k): v for k, v in self.label_names.items()},
            "splits": self.splits,
            **({"rows": "one per slice, with its class-id map"} if self.class_maps else {}),
            **({"notes": self.notes} if self.notes else {}),
        }


def is_volume_source(source: str) -> bool:
    """A Decathlon / nnU-Net folder or a CSV file of volume pairs."""
    path = Path(source)
    return (path.is_dir() and (path / "imagesTr").is_dir()) or (path.is_file() and path.suffix.lower() == ".csv")


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _folder_cases(images: Path, labels: Path, notes: list[str]) -> list[Case]:
    if not labels.is_dir():
        raise ValueError(f"{images} has no label folder {labels.name}/ beside it.")
    cases, other_channels = [], 0
    for image in sorted(p for p in images.iterdir() if is_nifti(p) and not p.name.startswith(".")):
        name = _case_name(image)
        label = _label_file(labels, name)
        if label is None and name[-5:-4] == "_" and name[-4:].isdigit():  # nnU-Net channel suffix
            if name[-5:] != CHANNEL_SUFFIX:
                other_channels += 1
                continue
            name = name[:-5]
            label = _label_file(labels, name)
        if label is None:
            raise ValueError(f"{image}: no label map {name}.nii.gz (or .nii) in {labels}.")
        cases.append(Case(name, image, label))
    if other_channels:
        notes.append(f"{images}: {other_channels} files of channels other than {CHANNEL_SUFFIX} are not read.")
    if not cases:
        raise ValueError(f"{images} holds no NIfTI volume (.nii or .nii.gz).")
    return cases


def _label_file(labels: Path, name: str) -> Path | None:
    return next((m for m in (labels / f"{name}.nii.gz", labels / f"{name}.nii") if m.is_file()), None)


def _label_names(folder: Path) -> dict[int, str]:
    """Label names from `dataset.json`: Decathlon's `{"1": "edema"}` or nnU-Net v2's `{"edema": 1}`."""
    path = folder / "dataset.json"
    if not path.is_file():
        return {}
    try:
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels", {})
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}.") from err
    names = {}
    for key, value in labels.items():
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit() and not key.isdigit()):
            names[int(value)] = key
        elif str(key).isdigit():
            names[int(key)] = str(value)
    return names


def _seg_label_names(cases: list[Case]) -> dict[int, str]:
    """Label names from the segments (SegmentLabel) of the cases' DICOM SEG labels, which must agree; a segment named
    `label <id>` (what `save_dicom_seg` writes for an unnamed label) names nothing."""
    names: dict[int, str] = {}
    named_by: dict[int, Path] = {}
    for case in cases:
        if is_nifti(case.label) or not is_dicom_seg(case.label):
            continue
        for label, name in dicom_seg_label_names(case.label).items():
            if not name.strip() or name == f"label {label}":
                continue
            if label in names and names[label] != name:
                raise ValueError(f"Label {label} is {names[label]!r} in {named_by[label]} but {name!r} in "
                                 f"{case.label}; one label value must name one structure in every DICOM SEG.")
            names[label], named_by[label] = name, case.label
    return dict(sorted(names.items()))


def volume_label_names(source: str) -> dict[int, str]:
    """The label names a volume source records: `dataset.json` of a folder, the DICOM SEG labels' segments of a CSV."""
    return _label_names(Path(source)) if Path(source).is_dir() else discover_cases(source, [])[1]


def discover_cases(source: str, notes: list[str]) -> tuple[dict[str, list[Case]], dict[int, str]]:
    """The cases of each split given by the source (`train`, and `test` when it has labelled test volumes)."""
    path = Path(source)
    if path.is_dir():
        splits = {"train": _folder_cases(path / "imagesTr", path / "labelsTr", notes)}
        if (path / "imagesTs").is_dir() and (path / "labelsTs").is_dir():
            splits["test"] = _folder_cases(path / "imagesTs", path / "labelsTs", notes)
            shared = sorted({c.name for c in splits["train"]} & {c.name for c in splits["test"]})
            if shared:
                raise ValueError(f"{path}: cases {shared[:5]} are in both imagesTr/ and imagesTs/.")
        elif (path / "imagesTs").is_dir():
            notes.append(f"{path / 'imagesTs'} has no labelsTs/: its volumes cannot be scored and are not used.")
        return splits, _label_names(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise ValueError(f"{path} must have the columns image,label[,split].")
    splits: dict[str, list[Case]] = {}
    lines: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        image, label = path.parent / row["image"], path.parent / row["label"]
        if not (image.is_file() or image.is_dir()):
            raise ValueError(f"{path} line {line}: {image} does not exist.")
        if not label.is_file():
            raise ValueError(f"{path} line {line}: {label} does not exist.")
        split = (row.get("split") or "train").strip()
        if split not in CSV_SPLITS:
            raise ValueError(f"{path} line {line}: split {split!r} is not one of {', '.join(CSV_SPLITS)}.")
        # The path as written, not the file name: `p1/ct.nii.gz` and `p2/ct.nii.gz` are two cases.
        name = row["image"].strip().rstrip("/")
        if name in lines:
            raise ValueError(f"{path} lines {lines[name]} and {line} name the same image {row['image']!r}.")
        lines[name] = line
        splits.setdefault(split, []).append(Case(name, image, label))
    if "train" not in splits:
        raise ValueError(f"{path} has no row of split `train`.")
    return splits, _seg_label_names([case for cases in splits.values() for case in cases])


def _stamp(path: Path) -> tuple:
    """Name, sizes and modification times of a file or of a series folder's files: part of the cache key."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def split_by_volume(cases: list[Case], fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """A seeded hold-out of whole volumes (at least one each side)."""
    if len(cases) < 2:
        raise ValueError(
            f"A validation split needs at least two training volumes, got {len(cases)}; add labelsTs/ or more cases."
        )
    order = list(cases)
    random.Random(seed).shuffle(order)
    held = min(len(order) - 1, max(1, round(fraction * len(order))))
    return order[held:], order[:held]


def encode_png(array: np.ndarray) -> dict:
    """A 2-D uint8 array as the value of a `datasets.Image` column: a grey-level PNG that decodes to the same pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return {"bytes": buffer.getvalue(), "path": None}


def _new_counts() -> dict:
    return {"volumes": 0, "rows": 0, "slices_without_label": 0, "objects_too_small": 0, "volumes_without_label": [],
            "missing_classes": []}


def _read_case(case: Case):
    try:
        volume = load_volume(case.image)
        return volume, load_label_map(case.label, volume)
    except ValueError:
        raise
    except Exception as err:  # name the case whatever broke (a codec, a truncated file)
        raise ValueError(f"{case.image} / {case.label}: {type(err).__name__}: {err}") from err


def _class_map_rows(case: Case, slice_axis: int, window, class_values: list[int], refuse_others: bool,
                    label_names: dict[int, str], counts: dict):
    """Every slice of one case with its class-id map, counting the slices without any class and the classes the
    volume lacks into `counts`."""
    volume, labels = _read_case(case)
    present = set(label_values(labels.data)) - {0}
    unknown = sorted(present - set(class_values))
    if refuse_others and unknown:
        raise ValueError(f"{case.label}: the label map holds values {unknown} that are not named classes "
                         f"{dict(enumerate(class_values))} (name them in dataset.json or --label_names, or choose "
                         "classes with --label_ids).")
    counts["volumes"] += 1
    counts["missing_classes"] += [f"{case.name}: {label_names.get(v, v)}" for v in class_values[1:] if v not in present]
    pixels = to_uint8_volume(volume, window=window)
    spacing = [volume.spacing[slice_axis], *volume.slice_spacing(slice_axis)]
    for index in range(volume.num_slices(slice_axis)):
        plane = labels.slice(slice_axis, index)
        classes = np.zeros(plane.shape, dtype=np.uint8)
        for class_id, value in enumerate(class_values[1:], start=1):
            classes[plane == value] = class_id
        counts["rows"] += 1
        counts["slices_without_label"] += int(not classes.any())
        yield {"image": encode_png(slice_view(pixels, slice_axis, index)), "mask": encode_png(classes),
               "case": case.name, "slice_index": index, "label_id": 0, "label_name": "", "spacing": spacing}


def _rows(case: Case, slice_axis: int, window, label_ids, label_names: dict[int, str], label_size, counts: dict,
          class_values: list[int] | None = None):
    """The rows of one case, images and masks PNG-encoded (each slice's image once for all its classes), counting
    what was kept and skipped into `counts`; with `class_values`, every slice with its class-id map."""
    if class_values is not None:
        yield from _class_map_rows(case, slice_axis, window, class_values, label_ids is None, label_names, counts)
        return
    volume, labels = _read_case(case)
    present = set(label_values(labels.data)) - {0}
    chosen = sorted(present) if label_ids is None else [i for i in label_ids if i in present]
    counts["volumes"] += 1
    if not chosen:
        counts["volumes_without_label"].append(case.name)
        return
    pixels = to_uint8_volume(volume, window=window)
    spacing = [volume.spacing[slice_axis], *volume.slice_spacing(slice_axis)]
    for index in range(volume.num_slices(slice_axis)):
        plane = labels.slice(slice_axis, index)
        image, any_label = None, False
        for label in chosen:
            mask = plane == label
            if not mask.any():
                continue
            any_label = True
            if label_size is not None and not survives_resize(mask, label_size):
                counts["objects_too_small"] += 1  # it would vanish at SAM's label resolution
                continue
            if image is None:  # once for all the slice's classes
                image = encode_png(slice_view(pixels, slice_axis, index))
            counts["rows"] += 1
            yield {
                "image": image,
                "mask": encode_png(mask.astype(np.uint8)),
                "case": case.name,
                "slice_index": index,
                "label_id": label,
                "label_name": label_names.get(label) or (labels.label_names or {}).get(label) or str(label),
                "spacing": spacing,
            }
        if not any_label:
            counts["slices_without_label"] += 1


def _slice_cases(cases: list[Case], numbers: list[int], reports: str, *, image_column: str, mask_column: str,
                 **slicing):
    """The generator of `Dataset.from_generator`: the rows of `cases`. What each case counted, or the error that
    stopped it, is written to `reports/<number>.json` (`.error`): workers (`num_proc`) cannot hand them back."""
    for case, number in zip(cases, numbers):
        counts = _new_counts()
        try:
            for row in _rows(case, counts=counts, **slicing):
                yield {image_column: row.pop("image"), mask_column: row.pop("mask"), **row}
        except ValueError as err:
            (Path(reports) / f"{number}.error").write_text(str(err), encoding="utf-8")
            raise
        (Path(reports) / f"{number}.json").write_text(json.dumps(counts), encoding="utf-8")


def _read_reports(reports: Path, count: int) -> dict | None:
    """The counts of `count` sliced cases combined in case order; None when no case was sliced (a cached dataset)."""
    files = [reports / f"{number}.json" for number in range(count)]
    if not any(f.is_file() for f in files):
        return None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise RuntimeError(f"Slicing left no counts for cases {missing[:5]} in {reports}.")
    total = _new_counts()
    for path in files:
        for key, value in json.loads(path.read_text(encoding="utf-8")).items():
            total[key] += value
    return total


def _first_error(reports: Path) -> str | None:
    errors = sorted(reports.glob("*.error"), key=lambda p: int(p.stem))
    return errors[0].read_text(encoding="utf-8") if errors else None


def _cached_counts(dataset: datasets.Dataset, counts: dict | None) -> dict:
    """What slicing counted, kept beside the dataset's cache file: a dataset loaded from the cache (the generator
    did not run, in later runs and in every process but the first) reads it back instead of re-reading volumes."""
    files = dataset.cache_files
    sidecar = Path(files[0]["filename"]).with_suffix(".icmoe_counts.json") if files else None
    if counts is not None:  # the generator ran
        if sidecar is not None:
            sidecar.write_text(json.dumps(counts), encoding="utf-8")
        return counts
    if sidecar is not None and sidecar.is_file():
        return json.loads(sidecar.read_text(encoding="utf-8"))
    raise ValueError(f"The sliced dataset at {files} was cached without its counts; clear the datasets cache.")


def load_volume_dataset(
    source: str,
    *,
    image_column: str,
    mask_column: str,
    slice_axis: int | str = "axial",
    window=None,
    label_ids: list[int] | None = None,
    validation_fraction: float = 0.2,
    seed: int = 42,
    label_size: int | None = None,
    num_proc: int | None = None,
    class_values: list[int] | None = None,
) -> tuple[datasets.DatasetDict, VolumeDataSummary]:
    """The per-class slice rows of every split, and what slicing skipped and kept.

    Args:
        class_values: for the prompt-free model, the stored label value of each class id (0 first): every slice
            becomes one row with its class-id map (see the module docstring).
        label_size: the longest side of SAM's label masks (the processor's `mask_size`); an object that would vanish
            at it (a one-voxel tip of an organ) gives no row and is counted in `objects_too_small`.
        num_proc: processes that slice volumes in parallel, each a share of a split's cases (default: this process
            alone). The rows, their order and the cache are the same whatever the number.
    """
    axis = resolve_slice_axis(slice_axis)
    notes: list[str] = []
    splits, label_names = discover_cases(source, notes)
    if "test" not in splits and "validation" not in splits:
        splits["train"], splits["validation"] = split_by_volume(splits["train"], validation_fraction, seed)
        notes.append(f"validation: {len(splits['validation'])} whole volumes held out of train (seed {seed}).")
    summary = VolumeDataSummary(slice_axis=axis, window=window, label_names=label_names, notes=notes,
                                class_maps=class_values is not None)
    features = datasets.Features({
        image_column: datasets.Image(),
        mask_column: datasets.Image(),
        "case": datasets.Value("string"),
        "slice_index": datasets.Value("int32"),
        "label_id": datasets.Value("int32"),
        "label_name": datasets.Value("string"),
        "spacing": datasets.Sequence(datasets.Value("float32"), length=3),
    })
    slicing = {"slice_axis": axis, "window": window, "label_ids": label_ids, "label_names": label_names,
               "label_size": label_size, "class_values": class_values}
    result = {}
    for split, cases in splits.items():
        # The cache key: what slicing reads (the files' names, sizes and times: a volume changed on disk is sliced
        # again), how it slices, and the slicing code's version.
        fingerprint = Hasher.hash((
            SLICING_VERSION, image_column, mask_column, sorted(slicing.items()),
            [(c.name, _stamp(c.image), _stamp(c.label)) for c in cases],
        ))
        with tempfile.TemporaryDirectory(prefix="icmoe-slicing-") as reports:
            try:
                dataset = datasets.Dataset.from_generator(
                    functools.partial(_slice_cases, image_column=image_column, mask_column=mask_column, **slicing),
                    features=features, fingerprint=fingerprint, num_proc=num_proc,
                    gen_kwargs={"cases": cases, "numbers": list(range(len(cases))), "reports": reports},
                )
            except datasets.exceptions.DatasetGenerationError as err:  # our own message (a bad file) is the cause
                if isinstance(err.__cause__, ValueError):
                    raise err.__cause__ from None
                message = _first_error(Path(reports))  # a worker's error arrives as the text of its traceback
                raise (ValueError(message) if message else err) from None
            except ValueError as err:
                counts = _read_reports(Path(reports), len(cases))
                if counts and not counts["rows"]:  # `datasets` refuses a split that generated nothing
                    raise ValueError(
                        f"Split `{split}` of {source} has no slice with a chosen label ({counts['volumes']} volumes; "
                        f"{counts['objects_too_small']} objects too small for SAM's label resolution; "
                        f"{len(counts['volumes_without_label'])} volumes without the chosen labels)."
                    ) from err
                raise
            counts = _read_reports(Path(reports), len(cases))
        counts = _cached_counts(dataset, counts)
        if counts["volumes_without_label"]:
            notes.append(
                f"{split}: {len(counts['volumes_without_label'])} volumes hold none of the chosen labels and give no "
                f"prompt: {', '.join(counts['volumes_without_label'][:10])}"
                f"{' ...' if len(counts['volumes_without_label']) > 10 else ''}."
            )
        missing = counts.get("missing_classes", [])
        absent = Counter(entry.split(": ", 1)[1] for entry in missing)
        never = sorted(name for name, volumes in absent.items() if volumes == len(cases))
        if split == "train" and never:
            raise ValueError(f"{source}: classes {never} occur in none of the {len(cases)} training volumes; nothing "
                             "could learn them (choose the classes with --label_ids).")
        if missing:
            notes.append(f"{split}: {len(missing)} (volume, class) pairs without the class (scored as absent from the "
                         f"reference): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}.")
        if len(dataset) == 0:
            raise ValueError(f"Split `{split}` of {source} has no slice with a chosen label.")
        summary.splits[split] = {
            "volumes": len(cases),
            "rows": len(dataset),
            "slices_without_label": counts["slices_without_label"],
            "objects_too_small": counts["objects_too_small"],
            "volumes_without_label": len(counts["volumes_without_label"]),
            **({"volumes_missing_a_class": len(missing)} if class_values is not None else {}),
        }
        result[split] = dataset
    return datasets.DatasetDict(result), summary
