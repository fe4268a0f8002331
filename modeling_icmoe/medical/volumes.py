"""Medical volumes: NIfTI in and out at the input's geometry, slicing, and slice-by-slice segmentation, prompted or
prompt-free.

SAM and IC-MoE segment 2-D images. A volume is read with nibabel and brought to the closest canonical (RAS+)
orientation, so that "axis 2" is the axial direction whatever the scanner wrote; it is cut into 2-D slices along
a chosen axis, each class present in a slice gets its own prompt (a box) or, for a prompt-free model, every slice is
segmented into all its classes, and the predicted masks are stacked back into a label map that is written with the
input's own orientation, shape, affine and header.

Intensities go to 8 bits once per volume (a CT window, or percentiles over the whole volume), with the rule the
2-D pipeline applies to single images (`scale_intensities`), so that training slices, pipeline calls and
`icmoe-sam predict` see the same pixels.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .. import imaging
from ..imaging import DEFAULT_INTENSITY_PERCENTILES, scale_intensities
from ..pipeline_icmoe_semantic import class_map_dtype, class_maps_at_original_size
# The volume type, its grid and the box prompts live in volume_grid.py and prompts.py (which dicom.py and
# propagation.py import without this module); their names stay importable from here.
from .prompts import SlicePrompt, parse_entry, prompts_from_boxes  # noqa: F401
from .volume_grid import (  # noqa: F401
    AFFINE_TOLERANCE_MM,
    Volume,
    checked_label_map,
    require_nibabel,
    rgb_slices,
    slice_view,
    to_stored_orientation,
    volume_from_image,
)

SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Label ids below this are counted with np.bincount (a count per id) to list the labels present, COUNTED_SLAB at a time.
MAX_COUNTED_LABEL, COUNTED_SLAB = 1 << 16, 1 << 20


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def resolve_slice_axis(axis: int | str) -> int:
    """A canonical axis index from 0/1/2 or `sagittal`/`coronal`/`axial`."""
    if isinstance(axis, str) and not axis.lstrip("-").isdigit():
        if axis not in SLICE_AXES:
            raise ValueError(f"Unknown slice axis {axis!r}; choose 0, 1, 2 or one of {sorted(SLICE_AXES)}.")
        return SLICE_AXES[axis]
    index = int(axis)
    if index not in (0, 1, 2):
        raise ValueError(f"The slice axis must be 0, 1 or 2 (sagittal, coronal, axial), got {axis!r}.")
    return index


def label_values(labels: np.ndarray) -> list[int]:
    """The distinct values of a non-negative integer label map, ascending: counted in one pass (`np.bincount`, a
    slab at a time) where sorting the volume (`np.unique`) takes seconds; label ids too large to count are sorted."""
    flat = labels.ravel(order="K")  # a view unless the array is flipped or cut
    if flat.size == 0:
        return []
    if flat.min() < 0 or flat.max() >= MAX_COUNTED_LABEL:
        return np.unique(flat).tolist()
    counts = np.zeros(int(flat.max()) + 1, dtype=np.intp)
    for start in range(0, flat.size, COUNTED_SLAB):  # bincount's intp copy of a whole volume would be large
        counts += np.bincount(flat[start : start + COUNTED_SLAB], minlength=counts.size)
    return np.flatnonzero(counts).tolist()


def load_nifti(path: str | os.PathLike) -> Volume:
    """Reads a 3-D NIfTI file in canonical orientation. Of a 4-D file (the Decathlon's multi-modal images) the
    first channel is read, with a warning that names the file and the channels left out."""
    nib = require_nibabel()
    path = str(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file.")
    try:
        image = nib.load(path)
        if len(image.shape) == 4:
            if image.shape[3] > 1:
                warnings.warn(
                    f"{path} holds {image.shape[3]} channels (4-D); channel 0 is read and the others are not used.",
                    stacklevel=2,
                )
            image = image.slicer[..., 0]
    except Exception as err:  # nibabel raises many types for broken files (ImageFileError, zlib, EOF, OS)
        raise ValueError(f"{path}: cannot be read as a NIfTI volume ({type(err).__name__}: {err}).") from err
    if len(image.shape) != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got shape {tuple(image.shape)}.")
    return volume_from_image(image, path)


def load_volume(path: str | os.PathLike) -> Volume:
    """An image volume: a NIfTI file, or a folder holding one DICOM series. A volume with NaN or infinite voxels is
    refused with the file and their count, as 2-D training images with such pixels are: filling them would be a guess
    that prediction and training make silently."""
    if os.path.isdir(path):
        from .dicom import load_dicom_series

        volume = load_dicom_series(path)
    else:
        volume = load_nifti(path)
    bad = _non_finite_count(volume.data)
    if bad:
        raise ValueError(f"{volume.path}: {bad} of {volume.data.size} voxels are NaN or infinite; fix the file (or "
                         "fill them) first.")
    return volume


def _non_finite_count(values: np.ndarray) -> int:
    """The NaN and infinite values of a volume, counted a slab of slices at a time (views, where a mask of the whole
    volume would be large)."""
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return 0
    step = max(1, COUNTED_SLAB * values.shape[-1] // values.size)
    return sum(int(np.count_nonzero(~np.isfinite(values[..., start : start + step])))
               for start in range(0, values.shape[-1], step))


def load_label_map(path: str | os.PathLike, reference: Volume) -> Volume:
    """Reads an integer label map that must lie on `reference`'s voxel grid (same shape and affine): a NIfTI file,
    or a DICOM SEG that references `reference`'s DICOM series."""
    if not is_nifti(path) and os.path.isfile(path):
        from .dicom import is_dicom_seg, load_dicom_seg

        if is_dicom_seg(path):
            return load_dicom_seg(path, reference)
    return checked_label_map(load_nifti(path), reference)


def to_uint8_volume(
    volume: Volume,
    *,
    window: str | Sequence[float] | None = None,
    intensity_percentiles: tuple[float, float] = DEFAULT_INTENSITY_PERCENTILES,
) -> np.ndarray:
    """The whole volume as uint8, one rule for every slice (a CT window, or percentiles over the volume)."""
    return scale_intensities(np.asarray(volume.data), window=window, intensity_percentiles=intensity_percentiles)


def save_label_map(
    labels: np.ndarray, reference: Volume, path: str | os.PathLike, label_names: dict[int, str] | None = None
) -> Path:
    """Writes a canonical-orientation label map with `reference`'s shape, orientation, affine and header (NIfTI), or
    as a DICOM SEG referencing `reference`'s series when `path` ends in `.dcm`."""
    if str(path).lower().endswith(".dcm"):
        from .dicom import save_dicom_seg

        return save_dicom_seg(labels, reference, path, label_names)
    nib = require_nibabel()
    stored = to_stored_orientation(labels, reference)
    if stored.shape != tuple(reference.image.shape):
        raise ValueError(f"The label map has shape {stored.shape}, its image {tuple(reference.image.shape)}.")
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    header = reference.image.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(stored.astype(dtype), reference.image.affine, header=header)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def prompts_from_label_map(labels: Volume, axis: int, label_ids: Sequence[int] | None = None) -> list[SlicePrompt]:
    """One box per (slice, class) present in `labels`; `label_ids` chooses the classes (default: every non-zero)."""
    present = label_values(labels.data)
    chosen = [v for v in present if v != 0] if label_ids is None else [int(v) for v in label_ids]
    missing = sorted(set(chosen) - set(present))
    if missing:
        raise ValueError(f"{labels.path}: label ids {missing} never occur (labels present: {present}).")
    prompts = []
    for index in range(labels.num_slices(axis)):
        plane = labels.slice(axis, index)
        for label in chosen:
            mask = plane == label
            if mask.any():
                prompts.append(SlicePrompt(index, label, imaging.mask_box(mask)))
    return prompts


def _batches(prompts: list[SlicePrompt], slices_per_batch: int) -> Iterator[tuple[list[int], list[SlicePrompt]]]:
    """Groups prompts by slice, `slices_per_batch` slices at a time."""
    by_slice: dict[int, list[SlicePrompt]] = {}
    for prompt in prompts:
        by_slice.setdefault(prompt.index, []).append(prompt)
    indices = sorted(by_slice)
    for start in range(0, len(indices), slices_per_batch):
        chunk = indices[start : start + slices_per_batch]
        yield chunk, [p for i in chunk for p in by_slice[i]]


@torch.no_grad()
def segment_volume(
    model,
    processor,
    volume: Volume,
    prompts: list[SlicePrompt],
    *,
    axis: int,
    window: str | Sequence[float] | None = None,
    intensity_percentiles: tuple[float, float] = DEFAULT_INTENSITY_PERCENTILES,
    slices_per_batch: int = 8,
    mask_threshold: float = 0.0,
    progress: bool = True,
    propagate: bool = False,
    points: Sequence | None = None,
    propagation=None,
    embeddings=None,
) -> np.ndarray:
    """Segments a volume from box prompts and returns a canonical-orientation label map of `volume`'s shape.

        segment_volume(model, processor, volume, prompts, *, axis, window=None, intensity_percentiles=(0.5, 99.5),
                       slices_per_batch=8, mask_threshold=0.0, progress=True, propagate=False, points=None,
                       propagation=None, embeddings=None) -> np.ndarray

    prompts: `SlicePrompt`s (`prompts_from_boxes`, `prompts_from_label_map`). Without `propagate`, every prompt is
        segmented on its own slice, and slices without a prompt stay empty.
    propagate: read `prompts` as key-slice boxes (one or more per class) and propagate each class from its key
        slices through the volume in both directions (`propagation.py`), until the object ends or the class's next
        key slice.
    points: `propagation.SlicePoint` clicks (positive or negative) that refine their slice, from which propagation
        reruns; with `propagate` only, and only for classes with a key box.
    propagation: a `propagation.PropagationSettings` (default: the settings chosen on validation).
    embeddings: a `propagation.SliceEmbeddings` of this volume, model and axis to reuse (with `propagate`): an app
        that adds clicks then encodes each slice once.

    Each slice's image embedding is computed once, whatever the number of classes prompted in it. Where masks of
    two classes overlap, the one with the higher predicted IoU wins. Bad prompts (a slice outside the volume, a box or
    point outside the slice, two boxes for one class and slice, a point on a class without a key box) raise a
    `ValueError` naming the prompt's source, class and slice.
    """
    from tqdm.auto import tqdm

    if points and not propagate:
        raise ValueError("Points refine a propagated class: pass propagate=True (and a key box for each clicked class).")
    if propagate:
        from .propagation import PropagationSettings, SliceEmbeddings, propagate_volume

        if embeddings is None:
            pixels = to_uint8_volume(volume, window=window, intensity_percentiles=intensity_percentiles)
            embeddings = SliceEmbeddings(model, processor, pixels, axis=axis, slices_per_batch=slices_per_batch)
        elif embeddings.pixels.shape != volume.shape or embeddings.axis != axis or embeddings.model is not model:
            raise ValueError("`embeddings` were made for another volume, slice axis or model.")
        return propagate_volume(embeddings, volume.shape, prompts, points or (), axis=axis,
                                settings=propagation or PropagationSettings(), mask_threshold=mask_threshold,
                                progress=progress)
    pixels = to_uint8_volume(volume, window=window, intensity_percentiles=intensity_percentiles)
    labels = np.zeros(volume.shape, dtype=np.int32)
    best = np.full(volume.shape, -np.inf, dtype=np.float32)
    device, dtype = model.device, model.dtype
    batches = list(_batches(prompts, slices_per_batch))
    for indices, chunk in tqdm(batches, desc="Segmenting slices", disable=not progress):
        encoding = processor(images=rgb_slices(pixels, axis, indices), return_tensors="pt")
        embeddings = model.get_image_embeddings(encoding["pixel_values"].to(device, dtype))
        (height, width), (new_height, new_width) = encoding["original_sizes"][0].tolist(), encoding[
            "reshaped_input_sizes"][0].tolist()
        scale = torch.tensor([new_width / width, new_height / height] * 2)
        position = {index: n for n, index in enumerate(indices)}
        boxes = torch.tensor([p.box for p in chunk]) * scale  # (N, 4) in the model's input frame
        outputs = model(
            image_embeddings=embeddings[[position[p.index] for p in chunk]],
            input_boxes=boxes[:, None].to(device, dtype),
            multimask_output=False,
        )
        masks = processor.post_process_masks(
            outputs.pred_masks.float().cpu(),
            encoding["original_sizes"][:1].repeat(len(chunk), 1),
            encoding["reshaped_input_sizes"][:1].repeat(len(chunk), 1),
            mask_threshold=mask_threshold,
        )
        scores = outputs.iou_scores[:, 0, 0].float().cpu().numpy()
        for prompt, mask, score in zip(chunk, masks, scores):
            plane_labels, plane_best = slice_view(labels, axis, prompt.index), slice_view(best, axis, prompt.index)
            wins = mask[0, 0].numpy() & (score > plane_best)
            plane_labels[wins] = prompt.label
            plane_best[wins] = score
    return labels


@torch.no_grad()
def segment_volume_without_prompts(
    model,
    processor,
    volume: Volume,
    *,
    axis: int,
    window: str | Sequence[float] | None = None,
    intensity_percentiles: tuple[float, float] = DEFAULT_INTENSITY_PERCENTILES,
    slices_per_batch: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Segments every slice of `volume` along `axis` with a prompt-free model (`IcMoeSamForSemanticSegmentation`) into
    its class ids, the argmax over its classes of each pixel (`class_maps_at_original_size`, the rule of training's
    evaluation and of the image-segmentation pipeline); returns a canonical-orientation label map of `volume`'s shape.
    """
    from tqdm.auto import tqdm

    pixels = to_uint8_volume(volume, window=window, intensity_percentiles=intensity_percentiles)
    labels = np.zeros(volume.shape, dtype=class_map_dtype(model.config.num_labels))
    device, dtype = model.device, model.dtype
    starts = range(0, volume.num_slices(axis), slices_per_batch)
    for start in tqdm(starts, desc="Segmenting slices", disable=not progress):
        indices = list(range(start, min(start + slices_per_batch, volume.num_slices(axis))))
        encoding = processor(images=rgb_slices(pixels, axis, indices), return_tensors="pt")
        pixel_values = encoding["pixel_values"].to(device, dtype)  # (B, 3, S, S)
        logits = model(pixel_values=pixel_values).logits.cpu()  # (B, L, h, w)
        maps = class_maps_at_original_size(logits, pixel_values.shape[-1], encoding["reshaped_input_sizes"],
                                           encoding["original_sizes"])
        for index, class_map in zip(indices, maps):
            slice_view(labels, axis, index)[...] = class_map
    return labels


def keep_largest_component(labels: np.ndarray, label_ids: Sequence[int] | None = None) -> np.ndarray:
    """`labels` with, per class, only its largest 3-D connected component (26-connectivity: voxels touching at a face,
    an edge or a corner are connected); the rest of that class becomes background (0). `label_ids` chooses the
    classes (default: every non-zero label). Returns a new array."""
    from scipy import ndimage

    kept = labels.copy()
    chosen = [v for v in label_values(labels) if v != 0] if label_ids is None else list(label_ids)
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    for label in chosen:
        components, count = ndimage.label(labels == label, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]  # voxels per component, the background's count left out
            kept[(components != 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return kept


def __getattr__(name: str):
    if name == "mask_box":  # moved to imaging.py, with the other image rules; the old name works for one release
        import warnings

        warnings.warn("`volumes.mask_box` moved to `modeling_icmoe.imaging.mask_box`; the old name will be removed in "
                      "the next release.", DeprecationWarning, stacklevel=2)
        return imaging.mask_box
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
