"""The imaging rules of IC-MoE SAM, written once: how a medical image becomes SAM's 8-bit RGB input (robust
intensity percentiles, or a CT window), which masks are binary, and what a box prompt is.

- Intensities: `to_uint8_rgb` and `scale_intensities` (percentiles `DEFAULT_INTENSITY_PERCENTILES`, or a window of
  `CT_WINDOWS` given by `resolve_window`); `load_medical_image` opens a path or URL first.
- Binary masks: bool, or values in {0, 1}, or in {0, 255} (255 the foreground): `binary_foreground_value`.
- Boxes: `[x0, y0, x1, y1]` in pixel coordinates of the frame they are given in, finite, `0 <= x0 <= x1 <= width`
  and `0 <= y0 <= y1 <= height`. A box of zero width or height is valid: it is the inclusive box (`mask_box`) of an
  object one pixel wide or tall. Points lie in the same closed frame. `check_boxes` and `check_points` apply the
  rule for the model, the pipeline, volume prompts and training alike.

The file imports no other file of this package, so the model's remote code can carry it alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import httpx
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

# Robust intensity range of non-8-bit images (CT, MR, 16-bit microscopy): outliers such as metal artefacts or hot
# pixels would otherwise squeeze the tissue into a few grey levels. The same rule as MedSAM's preprocessing.
DEFAULT_INTENSITY_PERCENTILES = (0.5, 99.5)
# CT display windows (level, width) in Hounsfield units, as radiology viewers name them.
CT_WINDOWS = {
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (80.0, 150.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


def _open_image(source: str | os.PathLike, timeout: float | None) -> PIL.Image.Image:
    source = str(source)
    if source.startswith(("http://", "https://")):
        response = httpx.get(source, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
        return PIL.Image.open(BytesIO(response.content))
    if not os.path.isfile(source):
        raise ValueError(f"Image {source!r} is neither an existing file nor an http(s) URL.")
    return PIL.Image.open(source)


def _pil_to_numpy(image: PIL.Image.Image) -> np.ndarray:
    """Pixel values without PIL's 8-bit `convert("RGB")`, which would clip 16-bit and float images."""
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in ("LA", "La"):
        image = image.getchannel(0)
    elif image.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "RGB", "RGBA"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
    return np.asarray(image)


def resolve_window(window: str | Sequence[float] | None) -> tuple[float, float] | None:
    """`(level, width)` of a CT window given as a preset name (`CT_WINDOWS`) or as two numbers (strings of numbers
    too); a one-item list holds a preset name, as a `--window` option with `nargs="+"` gives it. `None` stays `None`."""
    if window is None:
        return None
    if not isinstance(window, str) and len(window) == 1 and isinstance(window[0], str):
        window = window[0]
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"Unknown window preset {window!r}; choose one of {sorted(CT_WINDOWS)} or give level and width.")
        return CT_WINDOWS[window]
    values = tuple(float(v) for v in window)
    if len(values) != 2 or not all(np.isfinite(values)) or values[1] <= 0:
        raise ValueError(f"A window is (level, width) with a finite level and a width > 0, got {window!r}.")
    return values


# Values scaled at a time (an 8 MiB float64 temporary, which the allocator reuses): a volume is scaled a slab at a
# time, in place, where one pass over the whole array would make float64 temporaries of eight times its size.
SCALE_SLAB_VALUES = 1 << 20
# Integer images whose values span fewer than this find their percentiles from the count of each value.
COUNTED_INTENSITY_RANGE = 1 << 20


def scale_intensities(
    values: np.ndarray,
    *,
    window: str | Sequence[float] | None = None,
    intensity_percentiles: tuple[float, float] = DEFAULT_INTENSITY_PERCENTILES,
) -> np.ndarray:
    """Intensities of any shape (a 2-D image or a whole volume) to uint8, one rule for training and inference.

    uint8 stays as it is and bool becomes {0, 255}. Otherwise a CT `window` (level, width, or a `CT_WINDOWS` preset)
    maps `[level - width / 2, level + width / 2]` to `[0, 255]`; without one, float values within `[0, 1]` are scaled
    by 255, and anything else is clipped to its `intensity_percentiles` (computed over the whole array) and scaled.
    Non-finite values are set to the lowest finite value. The result has the input's memory order.
    """
    window = resolve_window(window)
    if values.dtype == np.uint8 and window is None:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ValueError(f"Unsupported image dtype {values.dtype}; use an integer, float or bool image.")
    floating = np.issubdtype(values.dtype, np.floating)
    finite = np.isfinite(values) if floating else np.ones((), dtype=bool)  # integers are finite
    if values.size == 0 or not finite.any():
        raise ValueError("The image holds no finite value.")
    fill = None if finite.all() else float(values.min(where=finite, initial=np.inf))
    if window is not None:
        level, width = window
        low, high = level - width / 2.0, level + width / 2.0
    elif floating and (
        values.min(where=finite, initial=np.inf) >= 0.0 and values.max(where=finite, initial=-np.inf) <= 1.0
    ):
        low, high = 0.0, 1.0
    else:
        low_pct, high_pct = intensity_percentiles
        if not 0.0 <= low_pct < high_pct <= 100.0:
            raise ValueError(f"`intensity_percentiles` must satisfy 0 <= low < high <= 100, got {intensity_percentiles}.")
        low, high = _percentiles(values, fill, [low_pct, high_pct])
    if high <= low:  # a constant image carries no contrast to keep
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.empty_like(values, dtype=np.uint8)
    for part in _slabs(values):
        slab = _as_float64(values[part], fill)
        np.clip(slab, low, high, out=slab)
        slab -= low
        slab /= high - low
        slab *= 255.0
        scaled[part] = np.round(slab, out=slab)
    return scaled


def _slabs(values: np.ndarray) -> list[tuple]:
    """Index tuples cutting `values` into slabs of about `SCALE_SLAB_VALUES` along its outermost axis in memory."""
    if values.ndim == 0:
        return [(...,)]
    axis = int(np.argmax(np.abs(values.strides)))
    step = max(1, SCALE_SLAB_VALUES * values.shape[axis] // values.size)
    return [(slice(None),) * axis + (slice(start, start + step),) for start in range(0, values.shape[axis], step)]


def _percentiles(values: np.ndarray, fill: float | None, percentiles: list[float]) -> np.ndarray:
    """`np.percentile` of `values` as float64 (non-finite ones set to `fill`). Of integers spanning a modest range,
    taken over the same values sorted from their counts, in the narrowest integer type that holds them and their
    differences: the same numbers (a permutation of the array; the interpolation's arithmetic is exact either way),
    where partitioning a float64 copy of a volume takes seconds."""
    if np.issubdtype(values.dtype, np.integer) and values.dtype.itemsize <= 4:
        lowest, highest = int(values.min()), int(values.max())
        if highest - lowest < COUNTED_INTENSITY_RANGE:
            counts = np.zeros(highest - lowest + 1, dtype=np.intp)
            flat = values.ravel(order="K")
            for start in range(0, flat.size, SCALE_SLAB_VALUES):  # bincount's intp copy of a volume would be large
                part = np.subtract(flat[start : start + SCALE_SLAB_VALUES], lowest, dtype=np.intp)
                counts += np.bincount(part, minlength=counts.size)
            # The narrowest signed type that holds the values and their differences.
            dtype = np.result_type(*(np.min_scalar_type(-abs(v) - 1) for v in (lowest, highest, highest - lowest)))
            ordered = np.repeat(np.arange(lowest, highest + 1, dtype=dtype), counts)
            return np.percentile(ordered, percentiles, overwrite_input=True)
    return np.percentile(_as_float64(values, fill), percentiles, overwrite_input=True)  # a copy of our own


def _as_float64(values: np.ndarray, fill: float | None) -> np.ndarray:
    """`values` as a new float64 array, its non-finite values replaced by `fill` (when given)."""
    copy = values.astype(np.float64)
    if fill is not None:
        copy[~np.isfinite(copy)] = fill
    return copy


def to_uint8_rgb(
    image: Any,
    *,
    intensity_percentiles: tuple[float, float] = DEFAULT_INTENSITY_PERCENTILES,
    window: str | Sequence[float] | None = None,
) -> np.ndarray:
    """Brings an image of any common medical format to the 8-bit RGB array SAM's processor expects.

    Args:
        image: a PIL image, a numpy array or a torch tensor: `(H, W)`, `(H, W, C)` or `(C, H, W)` with `C` in
            `{1, 3, 4}` (a fourth channel is taken as alpha and dropped); any integer, float or bool dtype.
        intensity_percentiles: for images that are not already 8-bit, the lower and upper percentiles clipped to
            before scaling to `[0, 255]`. Float images within `[0, 1]` are scaled by 255 instead, keeping their
            absolute intensities.
        window: a CT window, `(level, width)` in the image's units (Hounsfield units for CT) or a preset name of
            `CT_WINDOWS`; replaces the percentile rule (see `scale_intensities`).

    Returns:
        `np.ndarray` of shape `(H, W, 3)` and dtype `uint8`.
    """
    if isinstance(image, PIL.Image.Image):
        array = _pil_to_numpy(image)
    elif isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise ValueError(f"Expected a PIL image, numpy array or torch tensor, got {type(image).__name__}.")

    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3))):
        raise ValueError(
            f"An image must have shape (H, W), (H, W, C) or (C, H, W) with C in {{1, 3, 4}}, got {tuple(array.shape)}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"The image is empty: shape {tuple(array.shape)}.")

    scaled = scale_intensities(array, window=window, intensity_percentiles=intensity_percentiles)
    if scaled.ndim == 2:
        scaled = scaled[..., None]
    if scaled.shape[-1] == 1:
        scaled = np.repeat(scaled, 3, axis=-1)
    return np.ascontiguousarray(scaled)


def load_medical_image(
    image: Any,
    *,
    timeout: float | None = None,
    intensity_percentiles: tuple[float, float] = DEFAULT_INTENSITY_PERCENTILES,
    window: str | Sequence[float] | None = None,
) -> np.ndarray:
    """Loads a path, URL, PIL image, numpy array or torch tensor as an `(H, W, 3)` uint8 array (see `to_uint8_rgb`)."""
    if isinstance(image, (str, os.PathLike)):
        image = _open_image(image, timeout)
    return to_uint8_rgb(image, intensity_percentiles=intensity_percentiles, window=window)


# ------------------------------------------------------------------------------------------------ masks
def binary_foreground_value(values: Sequence, what: str = "Mask") -> int:
    """The foreground value of a binary mask whose distinct values are `values`: 1 for {0, 1} (or a subset), 255 for
    {0, 255}. Raises `ValueError` naming `what` and the values otherwise (bool masks need no check)."""
    present = {float(v) for v in values}
    if present <= {0.0, 1.0}:
        return 1
    if present <= {0.0, 255.0}:
        return 255
    shown = sorted(present)
    raise ValueError(
        f"{what} values {[int(v) if v.is_integer() else v for v in shown[:8]]}{' ...' if len(shown) > 8 else ''} are "
        "not binary ({0, 1}, {0, 255} or bool)."
    )


def mask_box(mask) -> list[float]:
    """`[x0, y0, x1, y1]` of a non-empty 2-D mask (numpy array or CPU tensor): the first and last foreground column
    and row, inclusive, as the common SAM fine-tuning recipes derive box prompts. An object one pixel wide gives
    `x0 == x1`, which `check_boxes` accepts."""
    mask = np.asarray(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("Cannot derive a box prompt from an empty mask.")
    return [float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])]


# ------------------------------------------------------------------------------------------------ prompts
def check_boxes(boxes, frame: tuple[int, int] | None, *, what: str = "Boxes", frame_name: str = "image",
                hint: str = "") -> np.ndarray:
    """`boxes` (`(..., 4)`, numpy or torch) as a float64 array after the one box rule: finite, `x0 <= x1`,
    `y0 <= y1`, inside the closed `frame` `(height, width)` (unchecked when None). Errors name `what`, the boxes at
    fault and the frame, then `hint`."""
    array = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes, dtype=np.float64)
    if array.shape[-1:] != (4,):
        raise ValueError(f"{what} must be [x0, y0, x1, y1] (last dimension 4), got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} hold NaN or infinite values.")
    inverted = (array[..., 2] < array[..., 0]) | (array[..., 3] < array[..., 1])
    if inverted.any():
        shown = array.tolist() if array.ndim == 1 else array[inverted].tolist()
        raise ValueError(f"{what} must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {shown}.")
    if frame is not None:
        height, width = frame
        outside = (array[..., :2] < 0).any(-1) | (array[..., 2] > width) | (array[..., 3] > height)
        if outside.any():
            shown, verb = (array.tolist(), "reaches") if array.ndim == 1 else (array[outside].tolist(), "reach")
            raise ValueError(f"{what} {shown} {verb} outside the {frame_name} ({width} x {height} pixels, x in "
                             f"[0, {width}], y in [0, {height}]).{hint}")
    return array


def check_points(points, frame: tuple[int, int] | None, *, what: str = "Points", frame_name: str = "image") -> np.ndarray:
    """`points` (`(..., 2)` as x, y) as a float64 array, finite and inside the closed `frame` `(height, width)`."""
    array = np.asarray(points.detach().cpu() if hasattr(points, "detach") else points, dtype=np.float64)
    if array.shape[-1:] != (2,):
        raise ValueError(f"{what} must be [x, y] (last dimension 2), got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} hold NaN or infinite values.")
    if frame is not None:
        height, width = frame
        outside = (array[..., 0] < 0) | (array[..., 0] > width) | (array[..., 1] < 0) | (array[..., 1] > height)
        if outside.any():
            shown, verb = (array.tolist(), "lies") if array.ndim == 1 else (array[outside].tolist(), "lie")
            raise ValueError(f"{what} {shown} {verb} outside the {frame_name} ({width} x {height} pixels).")
    return array
