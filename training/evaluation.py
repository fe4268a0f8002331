"""Evaluation: masks at the original resolution, gathered across processes, scored by the repository's metric."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_icmoe import IcMoeSamModel
from modeling_icmoe.medical.volume_metrics import score_volume, summarize

from .diagnostics import VotingStats
from .diagnostics import routed_counts as _routed_counts
from .methods import sam_of
from .metrics import load_segmentation_metric
from .prompts import prompt_inputs as _prompt_inputs
from .volume_data import VOLUME_COLUMNS


def reduce_routing_stats(counts: torch.Tensor, voting: VotingStats, accelerator) -> tuple[np.ndarray, VotingStats]:
    """The expert load `(layers, routed experts)` and the voting statistics of a split, summed over processes."""
    counts = accelerator.reduce(counts, reduction="sum")
    load = (counts / counts.sum(dim=1, keepdim=True)).cpu().numpy()
    totals = accelerator.reduce(torch.cat([voting.sums, torch.tensor([voting.tokens], dtype=torch.float64)]).to(
        accelerator.device), reduction="sum").cpu()
    return load, VotingStats(sums=totals[:-1], tokens=float(totals[-1]))


def volume_scores(predictions: list, references: list, metas: list[dict], *, nsd_tolerance_mm: float) -> dict:
    """Per-volume, per-class scores of slice predictions: each (case, class)'s slices stacked back into a volume.

    Slices without the class were not prompted, so they are empty in prediction and reference alike; the stack spans
    the prompted slice indices with their true spacing, which leaves distances unchanged.
    """
    groups: dict[tuple[str, int], list[int]] = {}
    for row, meta in enumerate(metas):
        groups.setdefault((meta["case"], int(meta["label_id"])), []).append(row)
    per_case, by_class = [], {}
    for (case, label), rows in sorted(groups.items()):
        first = min(int(metas[r]["slice_index"]) for r in rows)
        depth = max(int(metas[r]["slice_index"]) for r in rows) - first + 1
        shape = (depth, *np.asarray(references[rows[0]]).shape)
        prediction, reference = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
        for r in rows:
            index = int(metas[r]["slice_index"]) - first
            prediction[index], reference[index] = np.asarray(predictions[r], bool), np.asarray(references[r], bool)
        scores = score_volume(prediction, reference, metas[rows[0]]["spacing"], nsd_tolerance_mm=nsd_tolerance_mm)
        record = {"case": case, "label_id": label, "label_name": metas[rows[0]]["label_name"], "slices": len(rows),
                  **{k: round(float(v), 5) for k, v in scores.items()}}
        per_case.append(record)
        by_class.setdefault(label, []).append(scores)
    return {
        "mean": summarize(per_case),
        "per_class": {str(label): summarize(scores) for label, scores in sorted(by_class.items())},
        "per_case": per_case,
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "units": "hd95 in mm",
    }


@torch.no_grad()
def evaluate_model(
    model, loader, processor, accelerator, *, prompt: str, num_points: int, num_examples: int = 0,
    nsd_tolerance_mm: float = 1.0,
):
    """Scores `model` on `loader`; returns (metrics on the main process else {}, expert load, examples).

    The expert load is the share of each layer's tokens routed to each routed expert, over the whole split and all
    processes, shape (layers, routed experts) (None for models without IC-MoE); for IC-MoE models the metrics
    also carry `voting`, the split's voting diagnostics (`training.diagnostics.VotingStats`). Examples are up to
    `num_examples` [`Example`]s from this process's first batches, one per distinct image (a dataset with several
    objects per image would otherwise show one image again and again).
    """
    model.eval()
    sam = sam_of(accelerator.unwrap_model(model))
    is_icmoe = isinstance(sam, IcMoeSamModel)
    predictions, references, metas, examples, shown = [], [], [], [], set()
    load, voting = None, VotingStats()
    batches = tqdm(loader, desc="Evaluating", leave=False, disable=not accelerator.is_local_main_process)
    for batch in batches:
        inputs = _prompt_inputs(batch, prompt=prompt, num_points=num_points, box_jitter=0.0, generator=None)
        outputs = model(**inputs, output_router_probs=True) if is_icmoe else model(**inputs)
        best = outputs.iou_scores.argmax(dim=-1)  # (B, P)
        masks = processor.post_process_masks(
            outputs.pred_masks.float().cpu(), batch["original_sizes"].cpu(), batch["reshaped_input_sizes"].cpu()
        )
        local = [m[0, int(b[0])].numpy().astype(bool) for m, b in zip(masks, best.cpu())]
        predictions += accelerator.gather_for_metrics(local, use_gather_object=True)
        references += accelerator.gather_for_metrics(list(batch["gt_masks"]), use_gather_object=True)
        if "case" in batch:  # slices of volumes: scored per volume as well
            local_meta = [dict(zip(VOLUME_COLUMNS, values)) for values in zip(*(batch[k] for k in VOLUME_COLUMNS))]
            metas += accelerator.gather_for_metrics(local_meta, use_gather_object=True)
        if is_icmoe:
            counts = _routed_counts(outputs.router_probs)
            load = counts if load is None else load + counts  # (L, R)
            voting.add(outputs.routing, batch["labels"], sam.config.icmoe_config)
        if len(examples) < num_examples:
            examples += _examples(batch, inputs, outputs, best, local, processor, num_examples - len(examples), shown)
    if load is not None:
        load, voting = reduce_routing_stats(load, voting, accelerator)
    metrics = {}
    if accelerator.is_main_process:
        metrics = load_segmentation_metric().compute(predictions=predictions, references=references)
        if load is not None:
            metrics["voting"] = voting.summary()
        if metas:
            metrics["volumes"] = volume_scores(predictions, references, metas, nsd_tolerance_mm=nsd_tolerance_mm)
    return metrics, load, examples


@dataclass
class Example:
    """One evaluated object for `figures.plot_examples`, in the resized frame cropped to the unpadded image.

    `winner` is the winning routed expert per token of the last IC-MoE layer (None for other models); `box` is the
    box prompt `(x0, y0, x1, y1)` and `points` the point prompts `(N, 2)` in image pixels, when given; `dice` is the
    object's Dice at the original resolution (the metric's own per-object value)."""

    image: np.ndarray
    target: np.ndarray
    prediction: np.ndarray
    winner: np.ndarray | None
    box: np.ndarray | None
    points: np.ndarray | None
    dice: float


def _dice(prediction: np.ndarray, target: np.ndarray) -> float:
    total = int(prediction.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & target).sum()) / total


def _examples(batch, inputs, outputs, best, local, processor, count: int, shown: set) -> list[Example]:
    image_processor = processor.image_processor
    mean = torch.tensor(image_processor.image_mean)[:, None, None]
    std = torch.tensor(image_processor.image_std)[:, None, None]
    side = batch["pixel_values"].shape[-1]
    result = []
    for i in range(batch["pixel_values"].shape[0]):
        if len(result) >= count:
            break
        pixels = batch["pixel_values"][i]
        key = hash(pixels[:, :: max(1, side // 16), :: max(1, side // 16)].float().cpu().numpy().tobytes())
        if key in shown:  # another object of an image already shown
            continue
        shown.add(key)
        height, width = (int(v) for v in batch["reshaped_input_sizes"][i])
        image = (batch["pixel_values"][i].float().cpu() * std + mean).clamp(0, 1)[:, :height, :width]
        low = outputs.pred_masks.shape[-1]
        crop = (max(1, round(height * low / side)), max(1, round(width * low / side)))
        prediction = outputs.pred_masks[i, 0, int(best[i, 0])].float().cpu()[: crop[0], : crop[1]] > 0
        target = batch["labels"][i, 0].cpu()[: crop[0], : crop[1]] > 0
        winner = None
        if getattr(outputs, "router_probs", None):
            votes = outputs.router_probs[-1][i].float().cpu()  # (Hg, Wg, E) of the last IC-MoE layer
            grid = votes.shape[0]
            winner = votes.argmax(dim=-1)[: max(1, round(height * grid / side)), : max(1, round(width * grid / side))]
            winner = winner.numpy()
        box = inputs["input_boxes"][i, 0].float().cpu().numpy() if "input_boxes" in inputs else None
        points = inputs["input_points"][i, 0].float().cpu().numpy() if "input_points" in inputs else None
        dice = _dice(local[i], np.asarray(batch["gt_masks"][i], dtype=bool))
        result.append(
            Example(image.permute(1, 2, 0).numpy(), target.numpy(), prediction.numpy(), winner, box, points, dice)
        )
    return result


def __getattr__(name: str):
    """`prompt_inputs` and `routed_counts` serve the training step as well as evaluation: they moved to
    `training.prompts` and `training.diagnostics`; the old names work for one release, with a warning."""
    homes = {"prompt_inputs": "training.prompts", "routed_counts": "training.diagnostics"}
    if name in homes:
        import importlib
        import warnings

        warnings.warn(f"`training.evaluation.{name}` moved to `{homes[name]}.{name}`; the old name will be removed in "
                      "the next release.", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(homes[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
