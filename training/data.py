"""The `datasets` pipeline: loading, checking, SAM preprocessing and batching of (image, mask) pairs.

Sources: a Hub dataset id, a `save_to_disk` folder, or a folder of images and masks with a `metadata.csv`
(`file_name,mask_file_name[,split]`). Images of any common kind become 8-bit RGB exactly as the inference pipeline converts them; masks must be binary
({0,1}, {0,255}, bool) unless `label_ids` names the foreground values. Masks are checked once, up front, in a
`datasets.map` that decodes every image and mask: a truncated file, an image with NaN pixels, a non-binary or empty
mask stops the run naming the file, rather than failing or being skipped silently mid-training. A dataset that
passed is remembered beside its cache files, so that a re-start with the same data does not decode it again.
Preprocessing (resize, normalise, pad, box from the mask) runs on the fly with `with_transform`, in data-loader
workers.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.fingerprint import Hasher
from PIL import Image

from modeling_icmoe.imaging import binary_foreground_value, to_uint8_rgb

from .prompts import mask_box

METADATA_FILE = "metadata.csv"
SPLIT_PREFERENCE = ("test", "validation")
CHECK_VERSION = 1  # part of the key of a passed check: raise it when what the check rejects changes


def load_raw_dataset(
    source: str, *, image_column: str, mask_column: str, split: str | None = None
) -> datasets.DatasetDict:
    """Loads `source` as a `DatasetDict` whose image and mask columns decode to PIL images; with `split`, that split
    alone (a Hub dataset then downloads only it)."""
    path = Path(source)
    if path.is_dir() and (path / METADATA_FILE).is_file():
        dataset = _load_metadata_folder(path, image_column=image_column, mask_column=mask_column)
    elif path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
        dataset = datasets.load_from_disk(str(path))
    elif path.exists():
        raise ValueError(
            f"{source} is neither a `save_to_disk` folder nor a folder with a {METADATA_FILE} "
            "(columns file_name,mask_file_name[,split])."
        )
    else:
        dataset = datasets.load_dataset(source, split=split)
    if isinstance(dataset, datasets.Dataset):
        dataset = datasets.DatasetDict({split or "train": dataset})
    if split is not None:
        dataset = datasets.DatasetDict({split: dataset[split]})
    for split, part in dataset.items():
        for column in (image_column, mask_column):
            if column not in part.column_names:
                raise ValueError(
                    f"Split `{split}` of {source} has no column `{column}` (columns: {part.column_names}); "
                    "set --image_column / --mask_column."
                )
            if not isinstance(part.features[column], datasets.Image):
                dataset[split] = dataset[split].cast_column(column, datasets.Image())
    return dataset


def _load_metadata_folder(folder: Path, *, image_column: str, mask_column: str) -> datasets.DatasetDict:
    features = datasets.Features({image_column: datasets.Image(), mask_column: datasets.Image()})
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(columns, features=features)
            for name, columns in metadata_splits(folder, image_column=image_column, mask_column=mask_column).items()
        }
    )


def metadata_splits(folder: Path, *, image_column: str, mask_column: str) -> dict[str, dict[str, list[str]]]:
    """The file paths of a folder with a `metadata.csv`, by split: `{split: {image_column: [...], mask_column:
    [...]}}`; raises naming the line of a file that does not exist."""
    with open(folder / METADATA_FILE, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file_name", "mask_file_name"} <= set(rows[0]):
        raise ValueError(f"{folder / METADATA_FILE} must have the columns file_name,mask_file_name[,split].")
    by_split: dict[str, dict[str, list[str]]] = {}
    for line, row in enumerate(rows, start=2):
        for key in ("file_name", "mask_file_name"):
            if not (folder / row[key]).is_file():
                raise ValueError(f"{folder / METADATA_FILE} line {line}: {row[key]} does not exist.")
        split = by_split.setdefault(row.get("split") or "train", {image_column: [], mask_column: []})
        split[image_column].append(str(folder / row["file_name"]))
        split[mask_column].append(str(folder / row["mask_file_name"]))
    return by_split


def select_splits(
    dataset: datasets.DatasetDict,
    *,
    train_split: str,
    eval_split: str | None,
    validation_fraction: float,
    seed: int,
) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Train and eval splits: `eval_split`, else `test`, else `validation`, else a seeded hold-out of train."""
    if train_split not in dataset:
        raise ValueError(f"No split `{train_split}` in the dataset (splits: {list(dataset)}).")
    if eval_split is not None:
        if eval_split not in dataset:
            raise ValueError(f"No split `{eval_split}` in the dataset (splits: {list(dataset)}).")
        return dataset[train_split], dataset[eval_split], eval_split
    for name in SPLIT_PREFERENCE:
        if name in dataset and name != train_split:
            return dataset[train_split], dataset[name], name
    held_out = dataset[train_split].train_test_split(test_size=validation_fraction, seed=seed)
    return held_out["train"], held_out["test"], f"{train_split}[held-out {validation_fraction:g}, seed {seed}]"


def _plane(mask, what: str) -> np.ndarray:
    """A mask as a 2-D array: one channel of several equal ones, or the array itself."""
    array = np.asarray(mask)
    if array.ndim == 3:
        if not (array == array[..., :1]).all():
            raise ValueError(f"{what} must be single-channel; got shape {array.shape} with differing channels.")
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {array.shape}.")
    return array


def binary_mask(mask, label_ids: list[int] | None = None) -> np.ndarray:
    """A mask as a 2-D bool array: {0,1}, {0,255} or bool, or membership of `label_ids` when given."""
    array = _plane(mask, "Masks")
    if label_ids is not None:
        return np.isin(array, label_ids)
    if array.dtype == bool:
        return array
    try:
        return array == binary_foreground_value(np.unique(array).tolist())
    except ValueError as err:
        raise ValueError(f"{err} Pass --label_ids to choose the foreground values.") from None


def check_masks(
    dataset: datasets.Dataset,
    *,
    image_column: str,
    mask_column: str,
    label_ids: list[int] | None,
    name: str,
    label_size: int | None = None,
    num_proc: int | None = None,
    class_ids: list[int] | None = None,
) -> None:
    """Checks every (image, mask) pair once; raises naming the first bad row. With `class_ids` the masks are
    class-id maps (`check_pair`).

    A dataset that passes leaves a marker beside its cache files, named by its fingerprint and the check's
    arguments: checking it again (a re-start with the same data) reads no image. Changed data has another
    fingerprint and is checked again; so is a dataset held in memory (no cache files; its images may be files that
    change on disk).

    Args:
        label_size: the longest side of SAM's label masks (the processor's `mask_size`). A mask whose object
            vanishes when resized to it (nearest neighbour, as the processor resizes) is rejected: its box would
            otherwise be trained against an empty target.
        num_proc: processes that check shares of the rows in parallel (default: this process alone).
    """
    marker = _check_marker(dataset, image_column, mask_column, label_ids, label_size, class_ids)
    if marker is not None and marker.is_file():
        return

    def check(batch, indices):
        for index, image_file, mask_file in zip(indices, batch[image_column], batch[mask_column]):
            check_pair(image_file, mask_file, label_ids=label_ids, label_size=label_size, where=f"{name} row {index}",
                       class_ids=class_ids)

    # Undecoded, so that each file is opened (and named) here; returns nothing, so `map` writes no copy.
    raw = dataset.cast_column(image_column, datasets.Image(decode=False))
    raw = raw.cast_column(mask_column, datasets.Image(decode=False))
    raw.map(check, batched=True, with_indices=True, num_proc=num_proc, desc=f"Checking {name} images and masks")
    if marker is not None:
        with contextlib.suppress(OSError):  # a read-only cache folder: the data is checked again next time
            unfinished = marker.with_suffix(".tmp")
            unfinished.write_text(json.dumps({"rows": len(dataset), "fingerprint": dataset._fingerprint}))
            unfinished.replace(marker)  # whole or absent, whatever interrupts the write


def class_map(mask, class_ids: list[int]) -> np.ndarray:
    """A class-id mask as a 2-D int64 array, every value one of `class_ids` (0 the background)."""
    array = _plane(mask, "class-id masks")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"class-id masks must hold integers, got {array.dtype}")
    unknown = sorted(set(np.unique(array).tolist()) - set(class_ids))
    if unknown:
        raise ValueError(
            f"the mask holds values {unknown[:8]}{' ...' if len(unknown) > 8 else ''} that are not named classes "
            f"(ids {sorted(class_ids)}); name them (labels.json, --label_names) or map them first"
        )
    return array.astype(np.int64)


def check_pair(
    image_file: dict, mask_file: dict, *, label_ids: list[int] | None, label_size: int | None, where: str,
    class_ids: list[int] | None = None,
) -> tuple[Image.Image, Image.Image]:
    """Decodes one undecoded (image, mask) pair and checks it (the rules of `check_masks`); returns both decoded.
    With `class_ids` the mask is a class-id map (any of the classes, background alone included) instead of a binary
    mask. Raises `ValueError` starting with `where` and the files."""
    try:
        where += f" ({_file_label(image_file)}, mask {_file_label(mask_file)})"
        image, mask = _decode(image_file, "image"), _decode(mask_file, "mask")
        pixels = np.asarray(image)
        if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
            bad = int((~np.isfinite(pixels)).sum())
            raise ValueError(
                f"the image has {bad} NaN or infinite pixel values of {pixels.size}; training would see them "
                "replaced, so fix the file (or fill them) first"
            )
        array = binary_mask(mask, label_ids) if class_ids is None else class_map(mask, class_ids)
        if (image.height, image.width) != array.shape:
            raise ValueError(f"image is {image.height}x{image.width} but mask is {array.shape[0]}x{array.shape[1]}")
        if class_ids is not None:
            return image, mask
        if not array.any():
            raise ValueError("the mask is empty, so no prompt can be derived from it; remove such rows")
        if label_size is not None and not survives_resize(array, label_size):
            raise ValueError(
                f"the object ({int(array.sum())} pixels) vanishes at SAM's label resolution (longest side "
                f"{label_size}); remove such rows or crop the images"
            )
    except (ValueError, OSError) as err:
        raise ValueError(f"{where}: {err}") from err
    return image, mask


def _check_marker(dataset: datasets.Dataset, *key) -> Path | None:
    """Where `check_masks` marks a dataset that passed (beside its first cache file); None for in-memory data."""
    if not dataset.cache_files:
        return None
    folder = Path(dataset.cache_files[0]["filename"]).parent
    return folder / f"icmoe_checked-{Hasher.hash((CHECK_VERSION, dataset._fingerprint, *key))}.json"


def count_source_images(dataset: datasets.Dataset, image_column: str) -> int:
    """How many distinct image files (or embedded images) the rows use: one image can hold several objects."""
    raw = dataset.cast_column(image_column, datasets.Image(decode=False))
    seen = set()
    for batch in raw.iter(batch_size=256):
        for value in batch[image_column]:
            seen.add(value.get("path") or hashlib.sha1(value.get("bytes") or b"").hexdigest())
    return len(seen)


def _file_label(encoded: dict) -> str:
    """The file an undecoded `datasets.Image` value came from, or a note that it is embedded bytes."""
    return encoded.get("path") or f"embedded {len(encoded.get('bytes') or b'')}-byte image"


def _decode(encoded: dict, what: str) -> Image.Image:
    """Opens and fully decodes an undecoded `datasets.Image` value: a truncated or corrupt file fails here."""
    source = io.BytesIO(encoded["bytes"]) if encoded.get("bytes") else encoded.get("path")
    if source is None:
        raise ValueError(f"the {what} is missing")
    try:
        image = Image.open(source)
        image.load()
    except (OSError, SyntaxError) as err:  # PIL reports broken files as OSError (and some as SyntaxError)
        raise ValueError(f"the {what} file cannot be decoded: {err}") from err
    return image


def survives_resize(mask: np.ndarray, longest_side: int) -> bool:
    height, width = mask.shape
    scale = longest_side / max(height, width)
    size = (max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5)))
    return bool(np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST)).any())


@dataclass
class SamPairTransform:
    """`with_transform` function: SAM inputs for a batch of rows, with the exact box of each mask as prompt."""

    processor: object
    image_column: str
    mask_column: str
    label_ids: list[int] | None = None
    keep_masks: bool = False
    meta_columns: tuple[str, ...] = ()  # passed through unchanged (volume rows: case, slice, class, spacing)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {
            key: [] for key in ("pixel_values", "input_boxes", "labels", "original_sizes", "reshaped_input_sizes")
        }
        if self.keep_masks:
            out["gt_masks"] = []
        for column in self.meta_columns:
            out[column] = list(batch[column])
        for image, mask in zip(batch[self.image_column], batch[self.mask_column]):
            # The same conversion as the inference pipeline, so that training sees what inference will see.
            rgb = to_uint8_rgb(image)
            binary = binary_mask(mask, self.label_ids)
            encoded = self.processor(
                images=rgb,
                input_boxes=[[mask_box(binary)]],
                segmentation_maps=binary.astype(np.uint8),
                return_tensors="pt",
            )
            out["pixel_values"].append(encoded["pixel_values"][0])
            out["input_boxes"].append(encoded["input_boxes"][0].float())  # (1, 4)
            if not encoded["labels"].any():
                raise ValueError(
                    f"A {binary.shape[0]}x{binary.shape[1]} mask with {int(binary.sum())} foreground pixels is empty at "
                    "SAM's label resolution; remove such rows."
                )
            out["labels"].append(encoded["labels"].to(torch.uint8))  # (1, h, w)
            out["original_sizes"].append(encoded["original_sizes"][0])
            out["reshaped_input_sizes"].append(encoded["reshaped_input_sizes"][0])
            if self.keep_masks:
                out["gt_masks"].append(binary)
        return out


def collate(examples: list[dict]) -> dict:
    """Tensors stacked; masks kept for scoring and row metadata (volume rows) as lists."""
    return {
        key: torch.stack([e[key] for e in examples]) if isinstance(examples[0][key], torch.Tensor) else [e[key] for e in examples]
        for key in examples[0]
    }


def default_num_workers(num_processes: int) -> int:
    """Workers per process: the cores left after one per training process, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) // max(1, num_processes) - 1))
