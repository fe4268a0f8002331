"""The (image, class) pairs of the prompt-free benchmark: which classes each image's reference holds, every method's
Dice on those pairs (what the paired comparison compares), and the prompted upper bound's dataset of one row per pair.

The reference pairs of a split are its (image, class) pairs with the class in the reference map, image by image
and, within an image, in class order. Every method is scored on all of them (a missed class scores 0), so they are
the same objects for every method, the prompted IC-MoE included (it is prompted on exactly these).
`training/run.py --prompt none` also scores false positives on classes the reference lacks (Dice 0) and writes every
scored pair's class, in the same order, but not its image: `reference_pair_dice` finds the reference pairs' entries
among them with the reference maps.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from benchmarks.harness import save_dataset_dict
from training.data import class_map, load_raw_dataset
from training.semantic_metrics import METRIC_NAMES

ROWS_FILE = "pair_rows.json"  # beside the per-pair dataset: each split's reference pairs, which have a row


def reference_classes(dataset: str | Path, split: str, class_ids: list[int], limit: int | None = None) -> list[tuple]:
    """The foreground classes of each reference map of the first `limit` rows of `split` (the rows run.py scores
    with `--max_eval_samples limit`), in row order."""
    rows = load_raw_dataset(str(dataset), image_column="image", mask_column="mask", split=split)[split]
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    present = []
    for mask in rows["mask"]:
        values = np.unique(class_map(mask, class_ids))
        present.append(tuple(int(v) for v in values if v != 0))
    return present


def reference_pair_dice(pair_classes: list[int], pair_dice: list[float], references: list[tuple]) -> list[float] | None:
    """The Dice of every reference pair, in order, from the scored pairs' classes and Dice (`per_image_class_ids`
    and `per_image["dice"]` of eval_results.json) and each image's reference classes.

    The scored pairs are, image after image, the image's reference classes and its false positives in class order;
    a false positive scores exactly 0. Every split of the list into images that fits those rules is followed; None
    when two fits disagree on a reference pair's Dice (the list alone cannot say which is right). Raises when no
    split fits: the scores do not belong to these references."""
    # Position in the scored pairs -> the reference pairs' Dice so far, or None where two ways of getting there
    # disagree (one value per position keeps the search linear).
    states: dict[int, tuple | None] = {0: ()}
    for present in references:
        reached: dict[int, tuple | None] = {}
        for start, prefix in states.items():
            for stop in range(start, len(pair_classes) + 1):
                if stop > start + 1 and pair_classes[stop - 1] <= pair_classes[stop - 2]:
                    break  # an image's pairs are in class order
                if stop > start and pair_classes[stop - 1] not in present and pair_dice[stop - 1] != 0:
                    break  # a class the reference lacks is a false positive, and those score 0
                if set(present) <= set(pair_classes[start:stop]):
                    found = tuple(pair_dice[k] for k in range(start, stop) if pair_classes[k] in present)
                    dice = None if prefix is None else prefix + found
                    reached[stop] = dice if reached.get(stop, dice) == dice else None
        states = reached
    if len(pair_classes) not in states:
        raise ValueError(f"{len(pair_classes)} scored pairs do not fit the reference classes of {len(references)} "
                         "images: the scores are of another split or another subset of it.")
    fit = states[len(pair_classes)]
    return None if fit is None else list(fit)


def pair_rows(references: list[tuple]) -> list[tuple[int, int]]:
    """(image, class) of every reference pair, in order."""
    return [(image, class_id) for image, present in enumerate(references) for class_id in present]


def per_pair_dataset(source: str | Path, source_id: str, class_ids: list[int], label_size: int, cache_dir: Path) -> Path:
    """A `save_to_disk` copy of `source` with one row per reference pair of each split: the image and the binary
    mask of that class (cached by `source_id`, an id of the source's content and `label_size`). A pair whose object
    vanishes at SAM's label resolution (`label_size`, the longest side) has no row: SAM can be neither trained nor
    scored on it. Beside the dataset, `pair_rows.json` holds each split's reference pairs as (image, class, has a
    row)."""
    import datasets
    from PIL import Image

    from training.data import survives_resize

    folder = cache_dir / f"per_pair-{source_id}"
    if (folder / "dataset_dict.json").is_file():
        return folder
    raw = load_raw_dataset(str(source), image_column="image", mask_column="mask")
    splits, rows_of = {}, {}
    for split, rows in raw.items():
        encoded = rows.cast_column("image", datasets.Image(decode=False))["image"]
        masks = [class_map(mask, class_ids) for mask in rows["mask"]]
        pairs = pair_rows([tuple(int(v) for v in np.unique(m) if v != 0) for m in masks])
        rows_of[split] = [(image, class_id, survives_resize(masks[image] == class_id, label_size))
                          for image, class_id in pairs]
        kept = [(image, class_id) for image, class_id, has_row in rows_of[split] if has_row]
        splits[split] = datasets.Dataset.from_dict(
            {"image": [encoded[image] for image, _ in kept],
             "mask": [Image.fromarray(np.where(masks[image] == class_id, 255, 0).astype(np.uint8))
                      for image, class_id in kept]},
            features=datasets.Features({"image": datasets.Image(), "mask": datasets.Image()}),
        )
    save_dataset_dict(datasets.DatasetDict(splits), folder)
    (folder / ROWS_FILE).write_text(json.dumps(rows_of))
    return folder


def source_id(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def class_means_of_rows(row_classes: list[int], per_row: dict[str, list[float]], id2label: dict[int, str]) -> dict:
    """The prompt-free benchmark's scores from per-row scores of the prompted model: each class's mean over its rows,
    the macro means over classes (as `score_class_maps` forms them) and their spread over classes."""
    per_class = {}
    for class_id in sorted(set(row_classes)):
        rows = [k for k, c in enumerate(row_classes) if c == class_id]
        summary = {"class_id": class_id, "n_images": len(rows)}
        for name in METRIC_NAMES:
            values = [per_row[name][k] for k in rows]
            summary[name], summary[f"{name}_std"] = float(np.mean(values)), float(np.std(values))
        per_class[id2label[class_id]] = summary
    return {
        **{name: float(np.mean([c[name] for c in per_class.values()])) for name in METRIC_NAMES},
        **{f"{name}_std": float(np.std([c[name] for c in per_class.values()])) for name in METRIC_NAMES},
        "per_class": per_class,
    }
