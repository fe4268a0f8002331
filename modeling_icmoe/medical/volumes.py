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

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import imaging
from ..imaging import DEFAULT_INTENSITY_PERCENTILES, scale_intensities
from ..pipeline_icmoe_semantic import class_map_dtype, class_maps_at_original_size

SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Label ids below this are counted with np.bincount (a count per id) to list the labels present, COUNTED_SLAB at a time.
MAX_COUNTED_LABEL, COUNTED_SLAB = 1 << 16, 1 << 20
# Largest disagreement (in mm) between a label map's affine and its image's that still counts as the same grid.
AFFINE_TOLERANCE_MM = 1e-3


def _nibabel():
    try:
        import nibabel
    except ImportError as err:  # an optional dependency: only volume users need it
        raise ImportError("Reading NIfTI volumes needs nibabel: pip install 'icmoe-sam[volumes]'.") from err
    return nibabel


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


@dataclass
class Volume:
    """A volume in the closest canonical (RAS+) orientation, with what is needed to write results back.

    data: the voxel array in canonical orientation (lazy until first read for large files).
    spacing: voxel size along the canonical axes, in mm.
    image: the NIfTI image as stored (its orientation, affine and header), the reference for writing back; for a
        DICOM series, the equivalent image built from it (voxel axes: columns, rows, slices).
    path: the file or series folder it came from.
    affine: the voxel-to-world (RAS, mm) matrix of `data`, in canonical orientation.
    dicom_sources: the series' DICOM datasets in slice order (without pixel data), for DICOM volumes.
    label_names: names of the labels, for label maps that carry them (DICOM SEG segment labels).
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    image: object
    path: str
    affine: np.ndarray | None = None
    dicom_sources: list | None = None
    label_names: dict[int, str] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    def num_slices(self, axis: int) -> int:
        return self.data.shape[axis]

    def slice(self, axis: int, index: int) -> np.ndarray:
        """The 2-D slice `index` along canonical `axis` (rows and columns: the other two axes, in order), as a view
        of `data`: `np.take` would copy the whole volume for each slice of nibabel's Fortran-ordered arrays."""
        return slice_view(self.data, axis, index)

    def slice_spacing(self, axis: int) -> tuple[float, float]:
        """Pixel spacing (rows, columns) of a slice along `axis`, in mm."""
        return tuple(s for i, s in enumerate(self.spacing) if i != axis)


def slice_view(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2-D slice `index` along `axis` of a 3-D array, a view (basic indexing)."""
    return array[(slice(None),) * axis + (index,)]


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


def volume_from_image(image, path: str, dicom_sources: list | None = None) -> Volume:
    """A `Volume` of a 3-D nibabel image (from a file, or built from a DICOM series), read in canonical orientation."""
    nib = _nibabel()
    try:
        canonical = nib.as_closest_canonical(image)
        data = np.asanyarray(canonical.dataobj)
    except Exception as err:  # truncated or corrupt data raise zlib, EOF, OS and value errors alike
        raise ValueError(f"{path}: cannot be read as a volume ({type(err).__name__}: {err}).") from err
    # From the affine (what places the voxels), not the header's pixdim, which may disagree with it.
    spacing = tuple(float(z) for z in np.linalg.norm(np.asarray(canonical.affine)[:3, :3], axis=0))
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"{path}: voxel sizes {spacing} are not positive; the header is broken.")
    return Volume(
        data=data, spacing=spacing, image=image, path=path, affine=np.asarray(canonical.affine),
        dicom_sources=dicom_sources,
    )


def load_nifti(path: str | os.PathLike) -> Volume:
    """Reads a 3-D NIfTI file in canonical orientation. Of a 4-D file (the Decathlon's multi-modal images) the
    first channel is read, with a warning that names the file and the channels left out."""
    nib = _nibabel()
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
    return _checked_labels(load_nifti(path), reference)


def _checked_labels(labels: Volume, reference: Volume) -> Volume:
    """`labels` as an integer map (integer files keep their type, float and bool ones become integers), after checking
    it lies on `reference`'s voxel grid (compared in canonical orientation, so a label map stored with another axis
    order but on the same grid is accepted)."""
    if labels.shape != reference.shape:
        raise ValueError(
            f"{labels.path}: label map shape {labels.shape} differs from its image {reference.path} {reference.shape} "
            "(both in canonical orientation)."
        )
    difference = np.abs(labels.affine - reference.affine).max()
    if difference > AFFINE_TOLERANCE_MM:
        raise ValueError(
            f"{labels.path}: its affine differs from that of its image {reference.path} by up to {difference:.4g} mm; "
            "the label map must lie on the image's voxel grid (resample it first)."
        )
    data = np.asarray(labels.data)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all() or not np.equal(np.round(data), data).all():
            raise ValueError(f"{labels.path}: a label map must hold integer labels, found non-integral values.")
        data = data.astype(np.int64)
    elif data.dtype == np.bool_:
        data = data.astype(np.uint8)
    elif not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"{labels.path}: unsupported label map dtype {data.dtype}.")
    labels.data = data  # integers keep their type: an int64 copy of a 512 x 512 x 256 uint8 map is 512 MiB
    if labels.data.min() < 0:
        raise ValueError(f"{labels.path}: negative labels ({int(labels.data.min())}); labels must be >= 0.")
    return labels


def to_uint8_volume(
    volume: Volume,
    *,
    window: str | Sequence[float] | None = None,
    intensity_percentiles: tuple[float, float] = DEFAULT_INTENSITY_PERCENTILES,
) -> np.ndarray:
    """The whole volume as uint8, one rule for every slice (a CT window, or percentiles over the volume)."""
    return scale_intensities(np.asarray(volume.data), window=window, intensity_percentiles=intensity_percentiles)


def to_stored_orientation(array: np.ndarray, reference: Volume) -> np.ndarray:
    """A canonical-orientation array back in the orientation `reference` is stored in (the inverse of reading)."""
    nib = _nibabel()
    stored = nib.orientations.io_orientation(reference.image.affine)
    canonical = nib.orientations.axcodes2ornt(("R", "A", "S"))
    return nib.orientations.apply_orientation(array, nib.orientations.ornt_transform(canonical, stored))


def save_label_map(
    labels: np.ndarray, reference: Volume, path: str | os.PathLike, label_names: dict[int, str] | None = None
) -> Path:
    """Writes a canonical-orientation label map with `reference`'s shape, orientation, affine and header (NIfTI), or
    as a DICOM SEG referencing `reference`'s series when `path` ends in `.dcm`."""
    if str(path).lower().endswith(".dcm"):
        from .dicom import save_dicom_seg

        return save_dicom_seg(labels, reference, path, label_names)
    nib = _nibabel()
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


@dataclass
class SlicePrompt:
    """One prompt: the class `label` in slice `index` along the slice axis, as a box in that slice's pixels. `source`
    names where it came from (a file and entry), for error messages."""

    index: int
    label: int
    box: list[float]
    source: str = ""


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


def _entry_number(entry: dict, key: str, where: str, *, integral: bool) -> float | int:
    """`entry[key]` as a finite number (an int where `integral`), or a `ValueError` naming `where`."""
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            integral and value != int(value)):
        raise ValueError(f"{where}: {key!r} must be {'an integer' if integral else 'a finite number'}, got {value!r}.")
    return int(value) if integral else float(value)


def parse_entry(entry, number: int, source: str, kind: str, fields: dict[str, str]) -> tuple[str, int, int]:
    """Checks a JSON prompt entry's form: a dict with exactly the keys of `fields` (key: description), integer
    `slice` and `label` > 0. Returns its origin (`SOURCE: Kind entry N`), slice and label."""
    origin = f"{source + ': ' if source else ''}{kind} entry {number}"
    form = "{" + ", ".join(f"{k!r}: {v}" for k, v in fields.items()) + "}"
    if not isinstance(entry, dict) or set(entry) != set(fields):
        raise ValueError(f"{origin} must be {form}, got {entry!r}.")
    index = _entry_number(entry, "slice", origin, integral=True)
    label = _entry_number(entry, "label", origin, integral=True)
    if label <= 0:
        raise ValueError(f"{origin}: class {label}, slice {index}: labels are > 0 (0 is the background).")
    return origin, index, label


def prompts_from_boxes(entries: Sequence[dict], volume: Volume, axis: int, source: str = "") -> list[SlicePrompt]:
    """Prompts from `[{"slice": s, "label": l, "box": [x0, y0, x1, y1]}, ...]` in canonical slice pixels. Errors name
    `source` (the JSON file), the entry, its class and slice: a malformed entry, a slice outside the volume, a box
    outside the slice, two boxes for one class on one slice."""
    from .propagation import check_key_prompts

    if isinstance(entries, dict) or not isinstance(entries, Sequence):
        raise ValueError(f"{source or 'boxes'}: expected a list of box entries, got {type(entries).__name__}.")
    prompts = []
    for number, entry in enumerate(entries):
        origin, index, label = parse_entry(entry, number, source, "Box",
                                           {"slice": "int", "label": "int", "box": "[x0, y0, x1, y1]"})
        where, box = f"{origin}: class {label}, slice {index}", entry["box"]
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"{where}: 'box' must be [x0, y0, x1, y1], got {box!r}.")
        box = [_entry_number({"box": v}, "box", where, integral=False) for v in box]
        prompts.append(SlicePrompt(index, label, box, origin))
    check_key_prompts(prompts, [], num_slices=volume.num_slices(axis), slice_shape=volume.slice(axis, 0).shape)
    return prompts


def _rgb_slices(pixels: np.ndarray, axis: int, indices: Sequence[int]) -> list[np.ndarray]:
    """Slices `indices` of a uint8 volume as the `(H, W, 3)` images SAM's processor takes."""
    return [np.repeat(slice_view(pixels, axis, i)[..., None], 3, axis=-1) for i in indices]


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
        encoding = processor(images=_rgb_slices(pixels, axis, indices), return_tensors="pt")
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
        encoding = processor(images=_rgb_slices(pixels, axis, indices), return_tensors="pt")
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
