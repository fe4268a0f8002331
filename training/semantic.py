"""Training without prompts (`--prompt none`): class names, class-id masks, their SAM preprocessing, and evaluation
of every class on every image.

Masks hold class ids (0 the background). The class names come from `--label_names` (in id order, the background
first) or from a `labels.json` beside the data (`{"0": "background", "1": "liver", ...}`); every mask value must be
one of them (checked up front, naming the file and the value), and an image with no object is a valid example.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from modeling_icmoe.pipeline_icmoe_sam import to_uint8_rgb

from .data import class_map
from .diagnostics import VotingStats
from .evaluation import reduce_routing_stats, routed_counts
from .methods import sam_of
from .semantic_metrics import score_class_maps

LABELS_FILE = "labels.json"


def class_names(source: str, label_names: list[str] | None) -> dict[int, str]:
    """`id2label` of a dataset: `--label_names`, else the `labels.json` beside the data; both must agree when both
    are there."""
    path = Path(source) / LABELS_FILE
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
        raise ValueError(
            f"--prompt none needs the class names: a {LABELS_FILE} beside the data ({path} is missing) or "
            "--label_names background NAME1 NAME2 ..."
        )
    if sorted(id2label) != list(range(len(id2label))) or len(id2label) < 2:
        raise ValueError(f"Classes must be ids 0 .. N-1 with 0 the background and N >= 2, got {id2label}.")
    return id2label


@dataclass
class SemanticPairTransform:
    """`with_transform` function: SAM inputs of a batch of (image, class-id mask) rows, and the labels at the mask
    decoder's resolution; `keep_maps` keeps the original class maps for scoring."""

    processor: object
    image_column: str
    mask_column: str
    class_ids: list[int]
    keep_maps: bool = False

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = {key: [] for key in ("pixel_values", "labels", "original_sizes", "reshaped_input_sizes")}
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
            if self.keep_maps:
                out["gt_maps"].append(classes)
        return out


def class_maps_at_original_size(logits: torch.Tensor, input_size: int, reshaped_sizes, original_sizes) -> list:
    """Predicted class maps at each image's original size: the logits brought to the padded input frame, cropped to
    the resized image, resized to the original (bilinear, as SAM's `post_process_masks` does), then the argmax."""
    logits = F.interpolate(logits.float(), size=(input_size, input_size), mode="bilinear", align_corners=False)
    maps = []
    for image_logits, reshaped, original in zip(logits, reshaped_sizes, original_sizes):
        height, width = (int(v) for v in reshaped)
        cropped = image_logits[None, :, :height, :width]
        resized = F.interpolate(cropped, size=tuple(int(v) for v in original), mode="bilinear", align_corners=False)
        maps.append(resized[0].argmax(dim=0).to(torch.uint8 if logits.shape[1] < 256 else torch.int32).numpy())
    return maps


@torch.no_grad()
def evaluate_semantic(model, loader, accelerator, *, id2label: dict[int, str]):
    """Scores every class on every image of `loader`; returns (metrics on the main process else {}, expert load,
    no examples), as `evaluation.evaluate_model` does for prompted models."""
    model.eval()
    sam = sam_of(accelerator.unwrap_model(model))
    config = sam.config.icmoe_config
    predictions, references, load, voting = [], [], None, VotingStats()
    batches = tqdm(loader, desc="Evaluating", leave=False, disable=not accelerator.is_local_main_process)
    for batch in batches:
        outputs = model(pixel_values=batch["pixel_values"], output_router_probs=True)
        local = class_maps_at_original_size(outputs.logits.cpu(), batch["pixel_values"].shape[-1],
                                            batch["reshaped_input_sizes"].cpu(), batch["original_sizes"].cpu())
        predictions += accelerator.gather_for_metrics(local, use_gather_object=True)
        references += accelerator.gather_for_metrics(list(batch["gt_maps"]), use_gather_object=True)
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
        if load is not None:
            metrics["voting"] = voting.summary()
    return metrics, load, []
