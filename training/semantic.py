"""Training without prompts (`--prompt none`): class names, class-id masks, their SAM preprocessing, and evaluation
of every class on every image.

Masks hold class ids (0 the background). The class names come from `--label_names` (in id order, the background
first) or from a `labels.json` beside the data (`{"0": "background", "1": "liver", ...}`; a Hub dataset's repository
may hold it as `labels.json` or `id2label.json`); every mask value must be
one of them (checked up front, naming the file and the value), and an image with no object is a valid example.

Volumes (Decathlon / nnU-Net folders, CSV of pairs) take their names from `dataset.json` or `--label_names`, and
`--label_ids` chooses classes among the stored label values (the others become background); every slice is an
example, and evaluation stacks each volume's slices back to score it per class in millimetres.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_icmoe.imaging import to_uint8_rgb
from modeling_icmoe.pipeline_icmoe_semantic import class_map_dtype, class_maps_at_original_size
from modeling_icmoe.medical.volume_metrics import score_volume, summarize

from .data import class_map
from .diagnostics import VotingStats
from .diagnostics import routed_counts
from .evaluation import reduce_routing_stats
from .methods import sam_of
from .semantic_metrics import score_class_maps
from .volume_data import VOLUME_COLUMNS, volume_label_names

LABELS_FILE = "labels.json"
HUB_LABELS_FILES = (LABELS_FILE, "id2label.json")


def hub_labels_file(repo_id: str) -> Path | None:
    """The class-names file of a Hub dataset repository (`labels.json`, else `id2label.json`, the name the
    semantic-segmentation datasets of the Hub use), downloaded; None when the repository has neither."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in HUB_LABELS_FILES:
        try:
            return Path(hf_hub_download(repo_id, name, repo_type="dataset"))
        except EntryNotFoundError:
            continue
    return None


def class_names(source: str, label_names: list[str] | None) -> dict[int, str]:
    """`id2label` of a dataset: `--label_names`, else the `labels.json` beside the data (for a Hub dataset, its
    repository's `labels.json` or `id2label.json`, not fetched when `--label_names` is given, so that a run with
    names works offline); both must agree when both are there."""
    path = Path(source) / LABELS_FILE
    if not Path(source).exists() and not label_names:  # a Hub dataset id: its own file, if it has one
        path = hub_labels_file(source) or path
    recorded = None
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            recorded = {int(index): str(name) for index, name in raw.items()}
        except (json.JSONDecodeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path} must map class ids to names, {{\"0\": \"background\", \"1\": ...}}: {err}") from err
    given = dict(enumerate(label_names)) if label_names else None
    if given and recorded and given != recorded:
        raise ValueError(f"--label_names {list(given.values())} differ from {path} {recorded}; give one of them.")
    id2label = given or recorded
    if id2label is None:
        where = (f"a {LABELS_FILE} beside the data ({path} is missing)" if Path(source).exists() else
                 f"a {' or '.join(HUB_LABELS_FILES)} in the Hub dataset {source} (it has neither)")
        raise ValueError(f"--prompt none needs the class names: {where}, or --label_names background NAME1 NAME2 ...")
    if sorted(id2label) != list(range(len(id2label))) or len(id2label) < 2:
        raise ValueError(f"Classes must be ids 0 .. N-1 with 0 the background and N >= 2, got {id2label}.")
    return id2label


def volume_classes(source: str, label_names: list[str] | None,
                   label_ids: list[int] | None) -> tuple[dict[int, str], list[int]]:
    """`id2label` of a volume dataset and the stored label value of each class id: the names the source records
    (`dataset.json`, or a CSV's DICOM SEG segments) or `--label_names` (which must agree with them), all its labels
    or those `--label_ids` chooses."""
    recorded = volume_label_names(source)
    if label_ids:
        values = [0, *label_ids]
        if len(set(values)) != len(values) or min(label_ids) <= 0:
            raise ValueError(f"--label_ids must be distinct label values > 0, got {label_ids}.")
        unnamed = sorted(set(label_ids) - set(recorded))
        if recorded and unnamed:
            raise ValueError(f"--label_ids {unnamed}: {source} names no such label (its labels: {recorded}).")
    else:
        if not recorded and not label_names:
            raise ValueError(f"--prompt none needs the class names of {source}: a dataset.json or DICOM SEG labels "
                             "naming its labels, or --label_names background NAME1 NAME2 ... (with --label_ids "
                             "choosing their values).")
        values = sorted({0, *recorded}) if recorded else list(range(len(label_names)))
    named = {0: recorded.get(0, "background"), **{v: recorded.get(v, f"label_{v}") for v in values[1:]}}
    id2label = {index: named[value] for index, value in enumerate(values)}
    if label_names:
        given = dict(enumerate(label_names))
        if len(given) != len(values) or (recorded and given != id2label):
            raise ValueError(f"--label_names {label_names} differ from the classes of {source} {id2label} "
                             f"(stored values {values}); give names in this order, or choose with --label_ids.")
        id2label = given
    if len(id2label) < 2:
        raise ValueError(f"{source}: no foreground class to segment ({id2label}).")
    return id2label, values


@dataclass
class SemanticPairTransform:
    """`with_transform` function: SAM inputs of a batch of (image, class-id mask) rows, and the labels at the mask
    decoder's resolution; `keep_maps` keeps the original class maps for scoring."""

    processor: object
    image_column: str
    mask_column: str
    class_ids: list[int]
    keep_maps: bool = False
    meta_columns: tuple[str, ...] = ()  # passed through (the slices' volumes, for per-volume scores)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = {key: [] for key in ("pixel_values", "labels", "original_sizes", "reshaped_input_sizes")}
        out.update({column: list(batch[column]) for column in self.meta_columns if column in batch})
        if self.keep_maps:
            out["gt_maps"] = []
        for image, mask in zip(batch[self.image_column], batch[self.mask_column]):
            classes = class_map(mask, self.class_ids)
            encoded = self.processor(images=to_uint8_rgb(image), segmentation_maps=classes.astype(np.uint8 if
                                     classes.max() < 256 else np.int32), return_tensors="pt")
            out["pixel_values"].append(encoded["pixel_values"][0])
            out["labels"].append(encoded["labels"][0].long())  # (h, w) class ids
            out["original_sizes"].append(encoded["original_sizes"][0])
            out["reshaped_input_sizes"].append(encoded["reshaped_input_sizes"][0])
            if self.keep_maps:  # in the narrowest type: a volume's maps are held until it is scored
                out["gt_maps"].append(classes.astype(class_map_dtype(len(self.class_ids))))
        return out


@torch.no_grad()
def evaluate_semantic(model, loader, accelerator, *, id2label: dict[int, str], nsd_tolerance_mm: float = 1.0):
    """Scores every class on every image of `loader`; returns (metrics on the main process else {}, expert load,
    no examples), as `evaluation.evaluate_model` does for prompted models."""
    model.eval()
    sam = sam_of(accelerator.unwrap_model(model))
    config = sam.config.icmoe_config
    predictions, references, metas, load, voting = [], [], [], None, VotingStats()
    batches = tqdm(loader, desc="Evaluating", leave=False, disable=not accelerator.is_local_main_process)
    for batch in batches:
        outputs = model(pixel_values=batch["pixel_values"], output_router_probs=True)
        local = class_maps_at_original_size(outputs.logits.cpu(), batch["pixel_values"].shape[-1],
                                            batch["reshaped_input_sizes"].cpu(), batch["original_sizes"].cpu())
        predictions += accelerator.gather_for_metrics(local, use_gather_object=True)
        references += accelerator.gather_for_metrics(list(batch["gt_maps"]), use_gather_object=True)
        if "case" in batch:  # slices of volumes: scored per volume as well
            local = [{c: batch[c][i] for c in VOLUME_COLUMNS} for i in range(len(batch["case"]))]
            metas += accelerator.gather_for_metrics(local, use_gather_object=True)
        if outputs.router_probs:
            counts = routed_counts(outputs.router_probs)
            load = counts if load is None else load + counts  # (L, R)
            voting.add(outputs.routing, (batch["labels"] > 0)[:, None], config)
    if load is not None:
        load, voting = reduce_routing_stats(load, voting, accelerator)
    metrics = {}
    if accelerator.is_main_process:
        scores = score_class_maps(predictions, references, id2label)
        per_class = scores["per_class"]
        metrics = {
            **{name: scores[name] for name in ("dice", "iou", "hd95")},
            # Spread over the classes (the headline numbers are means over classes).
            **{f"{name}_std": float(np.std([c[name] for c in per_class.values()])) for name in ("dice", "iou", "hd95")},
            "n_images": scores["n_images"],
            "per_class": per_class,
            # Every scored (image, class) pair, in the split's order: what paired comparisons need.
            "per_image": {name: scores["per_pair"][name] for name in ("dice", "iou", "hd95")},
            "per_image_class_ids": scores["per_pair"]["class_id"],
        }
        if metas:
            metrics["volumes"] = volume_class_scores(predictions, references, metas, id2label,
                                                     nsd_tolerance_mm=nsd_tolerance_mm)
        if load is not None:
            metrics["voting"] = voting.summary()
    return metrics, load, []


def volume_class_scores(predictions: list, references: list, metas: list[dict], id2label: dict[int, str], *,
                        nsd_tolerance_mm: float) -> dict:
    """Per-volume, per-class scores in millimetres: each case's slices stacked back in slice order, each foreground
    class scored on the whole volume (Dice, IoU, HD95, NSD). As on images, a class absent from both the prediction
    and the reference volume is not counted, and one absent from the reference but predicted scores 0."""
    cases: dict[str, list[int]] = {}
    for row, meta in enumerate(metas):
        cases.setdefault(meta["case"], []).append(row)
    per_case, by_class = [], {}
    for case, rows in sorted(cases.items()):
        rows.sort(key=lambda r: int(metas[r]["slice_index"]))
        indices = [int(metas[r]["slice_index"]) for r in rows]
        if indices != list(range(indices[0], indices[0] + len(indices))):
            raise ValueError(f"Volume {case}: the evaluated slices {indices[:5]} ... are not consecutive (a truncated "
                             "split, --max_eval_samples?): it cannot be scored as a volume.")
        predicted, reference = np.stack([predictions[r] for r in rows]), np.stack([references[r] for r in rows])
        for class_id, name in sorted(id2label.items()):
            if class_id == 0 or not ((predicted == class_id).any() or (reference == class_id).any()):
                continue
            scores = score_volume(predicted == class_id, reference == class_id, metas[rows[0]]["spacing"],
                                  nsd_tolerance_mm=nsd_tolerance_mm)
            per_case.append({"case": case, "label_id": class_id, "label_name": name, "slices": len(rows),
                             **{k: round(float(v), 5) for k, v in scores.items()}})
            by_class.setdefault(class_id, []).append(scores)
    per_class = {str(c): summarize(scores) for c, scores in sorted(by_class.items())}
    # The headline is the mean over classes of each class's mean over volumes, as for images; the spread is over the
    # classes, as the mean is. `n_cases` counts the scored (volume, class) pairs, as the prompted path's does. No
    # class in any volume, predicted or not: nothing is counted, and there is no mean.
    mean = {}
    for name in ("dice", "iou", "hd95", "nsd") if per_class else ():
        values = [summary[name] for summary in per_class.values()]
        mean[name], mean[f"{name}_std"] = float(np.mean(values)), float(np.std(values))
    mean = {**mean, "n_cases": len(per_case), "n_volumes": len(cases)} if mean else {}
    return {"mean": mean, "per_class": per_class, "per_case": per_case, "n_volumes": len(cases),
            "label_names": {str(c): id2label[int(c)] for c in per_class},
            "nsd_tolerance_mm": nsd_tolerance_mm, "units": "hd95 in mm",
            "averaging": "per class over volumes, then over classes"}
