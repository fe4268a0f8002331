"""Propagation of key-slice prompts through a volume, and corrective clicks (points).

An annotator draws one box for a class on a key slice; the class is segmented there, and the next slice, in both
directions, is prompted from the previous slice's prediction: the box of the predicted mask widened by a margin,
optionally with the previous low-resolution logits as SAM's `input_masks` ("box+mask") or a positive point at the
mask's most interior pixel ("box+point"). A direction stops where the object ends: the predicted IoU falls below
`min_score`, or the mask's area below `min_area_ratio` of the key slice's, or the mask is empty. Between two key slices
of one class each slice is taken from the nearer key slice (a tie goes to the lower one): the two propagations run
towards each other and meet half-way, so no slice is decoded twice.

Points (`SlicePoint`: positive or negative clicks) refine a slice of a class that has a key box: that slice becomes a
key slice whose prompt is the box that reached it (the key box, or the box propagated to it) plus the points (the
points alone where propagation had stopped before it), and propagation reruns from it to the neighbouring key slices.
Runs not touched by a point are reused, not decoded again.

Every slice's image embedding is computed once (`SliceEmbeddings`, `slices_per_batch` slices per encoder pass, reading
ahead in the direction of travel); each step decodes the next slice of every running direction of every class in
one decoder pass. The settings kept by default are those chosen on validation volumes (docs/METHOD.md, "Propagation
through a volume").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..imaging import mask_box
# Points, boxes and their checks live in prompts.py; their names stay importable from here.
from .prompts import SlicePoint, SlicePrompt, check_key_prompts, points_from_entries  # noqa: F401
from .volume_grid import rgb_slices, slice_view

PROMPT_USES = ("box", "box+mask", "box+point")
# SAM's label for a padding point: its embedding is zero (HF's processor pads point lists with it).
PADDING_POINT_LABEL = -10


@dataclass(frozen=True)
class PropagationSettings:
    """How a prediction prompts the next slice, and where propagation stops. The defaults are the combination that
    scored best on validation volumes of the volumetric benchmark (`benchmarks/propagation.py`, docs/METHOD.md).

    prompt_use (`str`, *optional*, defaults to `"box"`):
        `"box"`: the previous mask's box with a margin; `"box+mask"`: plus the previous low-resolution logits as SAM's
        `input_masks`; `"box+point"`: plus a positive point at the previous mask's most interior pixel.
    min_score (`float`, *optional*, defaults to 0.6):
        A slice whose predicted IoU is below this ends the propagation (the slice is left empty).
    min_area_ratio (`float`, *optional*, defaults to 0.1):
        A slice whose mask is smaller than this fraction of the key slice's mask ends the propagation.
    box_margin (`float`, *optional*, defaults to 0.0):
        The propagated box is the previous mask's box widened on each side by this fraction of its width and height,
        clipped to the slice.
    """

    prompt_use: Literal["box", "box+mask", "box+point"] = "box"
    min_score: float = 0.6
    min_area_ratio: float = 0.1
    box_margin: float = 0.0

    def __post_init__(self):
        if self.prompt_use not in PROMPT_USES:
            raise ValueError(f"prompt_use must be one of {PROMPT_USES}, got {self.prompt_use!r}.")
        for name in ("min_score", "min_area_ratio", "box_margin"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


class SliceEmbeddings:
    """Image embeddings of a volume's slices, each computed once on first use, `slices_per_batch` slices per encoder
    pass (the slices asked for first, then read-ahead ones). Reuse one object across calls on the same volume and
    model (an app's clicks) to encode each slice once.

    pixels: the uint8 volume (`to_uint8_volume`); axis: the slice axis.
    """

    def __init__(self, model, processor, pixels: np.ndarray, *, axis: int, slices_per_batch: int = 8):
        if slices_per_batch <= 0:
            raise ValueError(f"slices_per_batch must be positive, got {slices_per_batch}.")
        self.model, self.processor, self.pixels, self.axis = model, processor, pixels, axis
        self.slices_per_batch = slices_per_batch
        self.num_slices = pixels.shape[axis]
        self.cache: dict[int, torch.Tensor] = {}
        self.original_size: list[int] | None = None  # (H, W) of a slice
        self.reshaped_size: list[int] | None = None  # (h, w) after the processor's resize, before padding

    def fetch(self, indices: Sequence[int], ahead: Sequence[int] = ()) -> torch.Tensor:
        """The embeddings of `indices` (`(N, C, h, w)`); missing ones are computed together with up to a batch of
        uncomputed `ahead` slices, the ones about to be needed."""
        missing = [i for i in dict.fromkeys(indices) if i not in self.cache]
        if missing:
            spare = max(0, -len(missing) % self.slices_per_batch)
            extra = [i for i in dict.fromkeys(ahead) if 0 <= i < self.num_slices and i not in self.cache
                     and i not in missing][:spare]
            self._encode(missing + extra)
        return torch.stack([self.cache[i] for i in indices])

    def _encode(self, indices: list[int]) -> None:
        model = self.model
        for start in range(0, len(indices), self.slices_per_batch):
            chunk = indices[start : start + self.slices_per_batch]
            encoding = self.processor(images=rgb_slices(self.pixels, self.axis, chunk), return_tensors="pt")
            self.original_size = encoding["original_sizes"][0].tolist()
            self.reshaped_size = encoding["reshaped_input_sizes"][0].tolist()
            embeddings = model.get_image_embeddings(encoding["pixel_values"].to(model.device, model.dtype))
            self.cache.update(zip(chunk, embeddings))

    def to_model_frame(self, coordinates: torch.Tensor) -> torch.Tensor:
        """Slice pixels (`x, y` pairs in the last dimension) to the model's resized input frame."""
        (height, width), (new_height, new_width) = self.original_size, self.reshaped_size
        scale = torch.tensor([new_width / width, new_height / height], dtype=coordinates.dtype)
        return (coordinates.reshape(*coordinates.shape[:-1], -1, 2) * scale).reshape(coordinates.shape)


@dataclass(frozen=True)
class _Anchor:
    """A key slice of one class: its box (None where only points prompt it) and its points `((x, y, positive), ...)`."""

    label: int
    index: int
    box: tuple[float, ...] | None
    points: tuple[tuple[float, float, bool], ...] = ()


@dataclass
class _SliceMask:
    """One class's prediction on one slice, kept as the crop of its bounding box; `prompt_box` is the box that
    prompted it (slice pixels)."""

    index: int
    score: float
    prompt_box: tuple[float, ...] | None
    origin: tuple[int, int] = (0, 0)
    crop: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))

    @classmethod
    def of(cls, index: int, score: float, prompt_box, mask: np.ndarray) -> _SliceMask:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return cls(index, score, prompt_box)
        crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
        return cls(index, score, prompt_box, (int(rows[0]), int(cols[0])), crop)

    @property
    def area(self) -> int:
        return int(self.crop.sum())

    def paste(self, shape: tuple[int, int]) -> np.ndarray:
        mask = np.zeros(shape, bool)
        (row, col), (height, width) = self.origin, self.crop.shape
        mask[row : row + height, col : col + width] = self.crop
        return mask


@dataclass
class _Front:
    """A running direction of one class: the last prediction, where it goes next, and how far it may go."""

    key: tuple
    label: int
    direction: int
    next_index: int
    limit: int
    anchor_area: int
    mask: np.ndarray
    logits: torch.Tensor  # (1, h, w) low-resolution logits of `mask`
    masks: list[_SliceMask] = field(default_factory=list)


class Propagator:
    """Segments classes from their key slices through a volume. Anchor decodes and runs (one direction from one key
    slice up to its limit) are remembered by their prompt, so a rerun after clicks decodes only what changed."""

    def __init__(self, embeddings: SliceEmbeddings, settings: PropagationSettings, *, mask_threshold: float = 0.0,
                 progress=None):
        self.embeddings, self.settings, self.mask_threshold = embeddings, settings, mask_threshold
        self.model, self.processor = embeddings.model, embeddings.processor
        self.progress = progress
        self.anchor_masks: dict[_Anchor, tuple[_SliceMask, torch.Tensor]] = {}
        self.runs: dict[tuple, list[_SliceMask]] = {}

    def segment(self, anchors: dict[int, list[_Anchor]]) -> dict[int, dict[int, _SliceMask]]:
        """Per class, its slices' masks, from its anchors (sorted by slice)."""
        self._decode_anchors([a for chosen in anchors.values() for a in chosen if a not in self.anchor_masks])
        fronts, plans = [], {}
        for label, chosen in anchors.items():
            plans[label] = []
            for n, anchor in enumerate(chosen):
                below = 0 if n == 0 else (chosen[n - 1].index + anchor.index) // 2 + 1
                above = self.embeddings.num_slices - 1 if n == len(chosen) - 1 else (anchor.index + chosen[n + 1].index) // 2
                for direction, limit in ((-1, below), (1, above)):
                    key = (anchor, direction, limit)
                    plans[label].append(key)
                    start = anchor.index + direction
                    masked, logits = self.anchor_masks[anchor]
                    if key in self.runs or (start - limit) * direction > 0 or masked.area == 0:
                        self.runs.setdefault(key, [])
                        continue
                    fronts.append(_Front(key, label, direction, start, limit, masked.area,
                                         masked.paste(tuple(self.embeddings.original_size)), logits))
        self._run(fronts)
        return {label: {m.index: m for key in keys for m in [self.anchor_masks[key[0]][0], *self.runs[key]]}
                for label, keys in plans.items()}

    def _decode_anchors(self, anchors: list[_Anchor]) -> None:
        # Prompts of one structure (box or not, number of points) share a decoder pass; padding points would change
        # the prediction.
        groups: dict[tuple[bool, int], list[_Anchor]] = {}
        for anchor in anchors:
            if anchor.box is None and not any(positive for _, _, positive in anchor.points):
                # Only negative clicks on a slice that propagation had not reached: the class is not there.
                self.anchor_masks[anchor] = (_SliceMask(anchor.index, 0.0, None), None)
                continue
            groups.setdefault((anchor.box is not None, len(anchor.points)), []).append(anchor)
        for (has_box, num_points), group in groups.items():
            indices = [a.index for a in group]
            ahead = [a.index + d * k for k in range(1, self.embeddings.slices_per_batch) for a in group for d in (1, -1)]
            embeddings = self.embeddings.fetch(indices, ahead)
            boxes = torch.tensor([a.box for a in group], dtype=torch.float32)[:, None] if has_box else None
            points = labels = None
            if num_points:
                points = torch.tensor([[[(x, y) for x, y, _ in a.points]] for a in group], dtype=torch.float32)
                labels = torch.tensor([[[int(p) for _, _, p in a.points]] for a in group])
            masks, logits, scores = self._decode(embeddings, boxes, points, labels, None)
            for anchor, mask, logit, score in zip(group, masks, logits, scores):
                self.anchor_masks[anchor] = (_SliceMask.of(anchor.index, score, anchor.box, mask), logit)

    def _run(self, fronts: list[_Front]) -> None:
        settings = self.settings
        while fronts:
            indices = [f.next_index for f in fronts]
            ahead = [f.next_index + f.direction * k for k in range(1, self.embeddings.slices_per_batch) for f in fronts]
            embeddings = self.embeddings.fetch(indices, ahead)
            boxes = [_margin_box(f.mask, settings.box_margin) for f in fronts]
            points = labels = input_masks = None
            if settings.prompt_use == "box+point":
                points = torch.tensor([[[_interior_point(f.mask)]] for f in fronts], dtype=torch.float32)
                labels = torch.ones(points.shape[:3], dtype=torch.long)
            elif settings.prompt_use == "box+mask":
                input_masks = torch.stack([f.logits for f in fronts])  # (N, 1, h, w)
            masks, logits, scores = self._decode(embeddings, torch.tensor(boxes)[:, None], points, labels, input_masks)
            if self.progress is not None:
                self.progress.update(len(fronts))
            running = []
            for front, box, mask, logit, score in zip(fronts, boxes, masks, logits, scores):
                area = int(mask.sum())
                if area == 0 or score < settings.min_score or area < settings.min_area_ratio * front.anchor_area:
                    self.runs[front.key] = front.masks
                    continue
                front.masks.append(_SliceMask.of(front.next_index, score, tuple(box), mask))
                front.mask, front.logits, front.next_index = mask, logit, front.next_index + front.direction
                if (front.next_index - front.limit) * front.direction > 0:
                    self.runs[front.key] = front.masks
                else:
                    running.append(front)
            fronts = running

    def _decode(self, embeddings, boxes, points, labels, input_masks):
        """One decoder pass; returns the masks at slice size (bool numpy), the low-resolution logits `(N, 1, h, w)`
        and the predicted IoU of each prompt."""
        model, frame = self.model, self.embeddings.to_model_frame
        device, dtype = model.device, model.dtype
        outputs = model(
            image_embeddings=embeddings,
            input_boxes=None if boxes is None else frame(boxes).to(device, dtype),
            input_points=None if points is None else frame(points).to(device, dtype),
            input_labels=None if labels is None else labels.to(device),
            input_masks=None if input_masks is None else input_masks.to(device, dtype),
            multimask_output=False,
        )
        count = embeddings.shape[0]
        logits = outputs.pred_masks[:, 0].float().cpu()  # (N, 1, h, w)
        sizes = torch.tensor([self.embeddings.original_size]).repeat(count, 1)
        reshaped = torch.tensor([self.embeddings.reshaped_size]).repeat(count, 1)
        masks = self.processor.post_process_masks(logits[:, None], sizes, reshaped, mask_threshold=self.mask_threshold)
        scores = outputs.iou_scores[:, 0, 0].float().cpu().tolist()
        return [m[0, 0].numpy() for m in masks], logits, scores


def _margin_box(mask: np.ndarray, margin: float) -> list[float]:
    """The box of `mask` widened on each side by `margin` of its size, clipped to the slice."""
    x0, y0, x1, y1 = mask_box(mask)
    height, width = mask.shape
    dx, dy = margin * (x1 - x0 + 1), margin * (y1 - y0 + 1)
    return [max(0.0, x0 - dx), max(0.0, y0 - dy), min(width - 1.0, x1 + dx), min(height - 1.0, y1 + dy)]


def _interior_point(mask: np.ndarray) -> tuple[float, float]:
    """`(x, y)` of the pixel of `mask` farthest from its boundary: inside the mask even where the mask is not convex."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return float(col), float(row)


def anchors_from_prompts(
    prompts: Sequence[SlicePrompt], points: Sequence[SlicePoint] = (), masks: dict[int, dict[int, _SliceMask]] | None
    = None,
) -> dict[int, list[_Anchor]]:
    """Per class, its key slices sorted: the key boxes, and with points each clicked slice, prompted by its key box or
    else the box that propagation (`masks`) prompted it with, plus its points."""
    boxes = {(p.label, p.index): tuple(float(v) for v in p.box) for p in prompts}
    clicks: dict[tuple[int, int], list[tuple[float, float, bool]]] = {}
    for point in points:
        clicks.setdefault((point.label, point.index), []).append((*map(float, point.point), bool(point.positive)))
    anchors: dict[int, list[_Anchor]] = {}
    for label, index in sorted(set(boxes) | set(clicks)):
        box = boxes.get((label, index))
        if box is None and masks is not None and index in masks.get(label, {}):
            box = masks[label][index].prompt_box
        anchors.setdefault(label, []).append(_Anchor(label, index, box, tuple(clicks.get((label, index), ()))))
    return anchors


def propagate_volume(
    embeddings: SliceEmbeddings,
    shape: tuple[int, int, int],
    prompts: Sequence[SlicePrompt],
    points: Sequence[SlicePoint] = (),
    *,
    axis: int,
    settings: PropagationSettings,
    mask_threshold: float = 0.0,
    progress: bool = True,
) -> np.ndarray:
    """The canonical label map (of `shape`) that `segment_volume(..., propagate=True)` returns; see the module
    docstring. Where classes overlap, the one with the higher predicted IoU wins."""
    from tqdm.auto import tqdm

    check_key_prompts(prompts, points, num_slices=shape[axis],
                      slice_shape=tuple(s for i, s in enumerate(shape) if i != axis))
    with tqdm(desc="Propagating", unit="slice", disable=not progress) as bar:
        propagator = Propagator(embeddings, settings, mask_threshold=mask_threshold, progress=bar)
        masks = propagator.segment(anchors_from_prompts(prompts))
        if points:
            masks = propagator.segment(anchors_from_prompts(prompts, points, masks))
    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, -np.inf, dtype=np.float32)
    for label, by_slice in masks.items():
        for index, predicted in by_slice.items():
            if predicted.area == 0:
                continue
            plane_labels, plane_best = slice_view(labels, axis, index), slice_view(best, axis, index)
            wins = predicted.paste(plane_labels.shape) & (predicted.score > plane_best)
            plane_labels[wins] = label
            plane_best[wins] = predicted.score
    return labels
