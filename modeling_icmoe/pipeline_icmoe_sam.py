"""Prompt-driven medical image segmentation with IC-MoE SAM, as a `transformers` pipeline.

IC-MoE (Zhang et al., arXiv 2510.17684) fine-tunes SAM for medical images; like SAM it segments what a box or a
few points point at. This file holds `IcMoeSamSegmentationPipeline` (task `"medical-mask-segmentation"`), the
image normalisation it applies to medical inputs (`to_uint8_rgb`), and `save_pretrained_with_pipeline`, which saves
a model so that `pipeline(task, model=folder_or_repo, trust_remote_code=True)` finds this pipeline.

The file imports no other file of this package, so it can be copied to the Hub on its own as remote code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers import AutoModelForMaskGeneration, PreTrainedModel, SamProcessor
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline

ICMOE_PIPELINE_TASK = "medical-mask-segmentation"
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
_PROMPT_KEYS = ("input_boxes", "input_points", "input_labels")


# ------------------------------------------------------------------------------------------------ images
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
    """`(level, width)` of a CT window given as a preset name (`CT_WINDOWS`) or as two numbers; `None` stays `None`."""
    if window is None:
        return None
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


# ----------------------------------------------------------------------------------------------- prompts
def _as_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be numbers in nested lists or an array: {err}") from err
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` holds NaN or infinite values.")
    return array


def _check_prompts(prompts: dict[str, Any], image_size: tuple[int, int] | None = None) -> dict[str, list]:
    """Validates one image's prompts and shapes them as `SamProcessor` takes them (with the image level).

    With `image_size` (height, width), boxes and points must lie inside the image (pixel coordinates, edges
    included): a prompt outside it would be clipped by the model into a different question."""
    boxes, points, labels = (prompts.get(key) for key in _PROMPT_KEYS)
    if labels is not None and points is None:
        raise ValueError("`input_labels` needs `input_points`.")
    if boxes is None and points is None:
        raise ValueError("Give each image a prompt: `input_boxes` and/or `input_points`.")
    result: dict[str, list] = {}
    num_prompts = None
    if boxes is not None:
        boxes = _as_array(boxes, "input_boxes")
        if boxes.ndim == 1:
            boxes = boxes[None]  # one box
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or boxes.shape[0] == 0:
            raise ValueError(
                "`input_boxes` must be one box [x0, y0, x1, y1] or a list of them (shape (num_boxes, 4)), got shape "
                f"{boxes.shape}."
            )
        empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if empty.any():
            raise ValueError(
                f"Boxes must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1 (a non-empty area), got "
                f"{boxes[empty].tolist()}."
            )
        if image_size is not None:
            height, width = image_size
            outside = (boxes[:, :2] < 0).any(axis=1) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
            if outside.any():
                raise ValueError(
                    f"Boxes {boxes[outside].tolist()} reach outside the image ({width} x {height} pixels, x in "
                    f"[0, {width}], y in [0, {height}])."
                )
        num_prompts = boxes.shape[0]
        result["input_boxes"] = [boxes.tolist()]
    if points is not None:
        points = _as_array(points, "input_points")
        if points.ndim == 1:
            points = points[None, None]  # one point
        elif points.ndim == 2:
            points = points[None]  # several points on one object
        if points.ndim != 3 or points.shape[-1] != 2 or 0 in points.shape:
            raise ValueError(
                "`input_points` must be one point [x, y], the points of one object (shape (num_points, 2)) or the "
                f"points of several objects (shape (num_objects, num_points, 2)), got shape {points.shape}."
            )
        if image_size is not None:
            height, width = image_size
            outside = (points[..., 0] < 0) | (points[..., 0] > width) | (points[..., 1] < 0) | (points[..., 1] > height)
            if outside.any():
                raise ValueError(
                    f"Points {points[outside].tolist()} lie outside the image ({width} x {height} pixels)."
                )
        if num_prompts is not None and points.shape[0] != num_prompts:
            raise ValueError(
                f"With boxes and points together each box needs its points: {num_prompts} boxes but points for "
                f"{points.shape[0]} objects."
            )
        if labels is None:
            labels = np.ones(points.shape[:2])  # foreground clicks
        labels = _as_array(labels, "input_labels").reshape(-1)
        if labels.size != points.shape[0] * points.shape[1] or not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"`input_labels` must hold one label (1 = foreground, 0 = background) per point: "
                f"{points.shape[0] * points.shape[1]} points, got {labels.size} labels with values "
                f"{sorted(set(labels.tolist()))[:5]}."
            )
        result["input_points"] = [points.tolist()]
        result["input_labels"] = [labels.reshape(points.shape[:2]).astype(int).tolist()]
    return result


# ---------------------------------------------------------------------------------------------- pipeline
def sam_processor_of(pipeline: Pipeline) -> SamProcessor:
    """A pipeline's SamProcessor: the one it was given, else one around the SAM image processor it was given."""
    if pipeline.processor is not None:
        return pipeline.processor
    if pipeline.image_processor is None:
        raise ValueError(
            f"{type(pipeline).__name__} needs a SamProcessor (or a SAM image processor): pass `processor=...`."
        )
    return SamProcessor(image_processor=pipeline.image_processor)


def image_preprocess_params(
    intensity_percentiles: tuple[float, float] | None,
    window: str | Sequence[float] | None,
    timeout: float | None,
) -> dict[str, Any]:
    """The `preprocess` arguments of the image options a pipeline call gave (those left `None` keep their defaults)."""
    params: dict[str, Any] = {}
    if intensity_percentiles is not None:
        params["intensity_percentiles"] = tuple(intensity_percentiles)
    if window is not None:
        params["window"] = resolve_window(window)
    if timeout is not None:
        params["timeout"] = timeout
    return params


class IcMoeSamSegmentationPipeline(Pipeline):
    """Segments what boxes or points prompt in medical images, with an IC-MoE SAM (or any SAM) model.

    Example:

    ```python
    from transformers import pipeline

    segmenter = pipeline("medical-mask-segmentation", model="org/icmoe-sam", trust_remote_code=True)
    result = segmenter("scan.png", input_boxes=[[30, 40, 120, 160]])
    result["masks"].shape, result["scores"]  # (1, H, W) bool, (1,) float
    ```

    Call arguments:
        images: one image or a list of images: file path, http(s) URL, PIL image, numpy array or torch tensor;
            grayscale, RGB or RGBA; 8-bit, 16-bit, float or bool (see `to_uint8_rgb`). A dict
            `{"image": ..., "input_boxes": ..., ...}` (or a list of them) carries its own prompts.
        input_boxes: boxes `[x0, y0, x1, y1]` in pixels of the original image, one mask per box. For a list of
            images, a list with one entry per image.
        input_points: `[x, y]` clicks in pixels: one point, the points of one object `(num_points, 2)`, or
            `(num_objects, num_points, 2)`. With boxes, one object per box. For a list of images, one entry per image.
        input_labels: one label per point, 1 = foreground (the default), 0 = background.
        multimask_output (`bool`, defaults to `False`): let SAM propose three masks per prompt and keep the one with
            the highest predicted IoU (helps with single-click prompts).
        mask_threshold (`float`, defaults to 0.0): threshold on the mask logits.
        intensity_percentiles (`tuple[float, float]`, defaults to `(0.5, 99.5)`): intensity clipping of images that
            are not 8-bit.
        window (`str` or `tuple[float, float]`, *optional*): CT window, `(level, width)` in Hounsfield units or a
            preset name (`soft_tissue`, `lung`, `bone`, ...; see `CT_WINDOWS`), instead of the percentile rule. Use
            the window the model was trained with (its card names it).
        timeout (`float`, *optional*): timeout of URL downloads, in seconds.

    Returns:
        Per image, a dict with `masks` (`np.ndarray` of dtype bool and shape `(num_prompts, H, W)`, at the original
        image size) and `scores` (`np.ndarray` of shape `(num_prompts,)`, the predicted IoU of each mask). A list of
        them for a list of images.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor = sam_processor_of(self)

    def _sanitize_parameters(
        self,
        multimask_output: bool | None = None,
        mask_threshold: float | None = None,
        intensity_percentiles: tuple[float, float] | None = None,
        window: str | Sequence[float] | None = None,
        timeout: float | None = None,
        **kwargs,
    ):
        if kwargs:
            raise ValueError(f"Unknown arguments for {type(self).__name__}: {sorted(kwargs)}.")
        preprocess_params = image_preprocess_params(intensity_percentiles, window, timeout)
        forward_params = {} if multimask_output is None else {"multimask_output": bool(multimask_output)}
        postprocess_params = {} if mask_threshold is None else {"mask_threshold": float(mask_threshold)}
        return preprocess_params, forward_params, postprocess_params

    def __call__(
        self,
        images: Any,
        input_boxes: Any = None,
        input_points: Any = None,
        input_labels: Any = None,
        **kwargs,
    ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        prompts = {"input_boxes": input_boxes, "input_points": input_points, "input_labels": input_labels}
        given = {key: value for key, value in prompts.items() if value is not None}
        if isinstance(images, (list, tuple)) and not images:
            raise ValueError("Got an empty list of images.")
        if isinstance(images, dict) or (isinstance(images, (list, tuple)) and images and isinstance(images[0], dict)):
            if given:
                raise ValueError("Pass prompts either inside the input dicts or as arguments, not both.")
            inputs = images
        elif isinstance(images, (list, tuple)):
            for key, value in given.items():
                if not isinstance(value, (Sequence, np.ndarray, torch.Tensor)) or len(value) != len(images):
                    raise ValueError(
                        f"For a list of {len(images)} images, `{key}` must be a list with one entry per image."
                    )
            inputs = [
                {"image": image, **{key: value[index] for key, value in given.items()}}
                for index, image in enumerate(images)
            ]
        else:
            inputs = {"image": images, **given}
        return super().__call__(list(inputs) if isinstance(inputs, tuple) else inputs, **kwargs)

    def preprocess(
        self,
        inputs: dict[str, Any],
        intensity_percentiles: tuple[float, float] = DEFAULT_INTENSITY_PERCENTILES,
        window: tuple[float, float] | None = None,
        timeout: float | None = None,
    ) -> dict[str, torch.Tensor]:
        if "image" not in inputs:
            raise ValueError(f"An input dict needs an `image` key, got keys {sorted(inputs)}.")
        unknown = sorted(set(inputs) - {"image", *_PROMPT_KEYS})
        if unknown:
            raise ValueError(f"Unknown input keys {unknown}; expected `image` and {list(_PROMPT_KEYS)}.")
        image = load_medical_image(
            inputs["image"], timeout=timeout, intensity_percentiles=intensity_percentiles, window=window
        )
        encoding = self.processor(images=image, **_check_prompts(inputs, image.shape[:2]), return_tensors="pt")
        # The processor gives float64 coordinates; the model computes in its own dtype.
        return {key: value.to(self.dtype) if value.is_floating_point() else value for key, value in encoding.items()}

    def _forward(self, model_inputs: dict[str, torch.Tensor], multimask_output: bool = False) -> dict[str, Any]:
        original_sizes = model_inputs.pop("original_sizes")
        reshaped_input_sizes = model_inputs.pop("reshaped_input_sizes")
        outputs = self.model(**model_inputs, multimask_output=multimask_output)
        return {
            "pred_masks": outputs.pred_masks,  # (1, P, M, h, w) logits
            "iou_scores": outputs.iou_scores,  # (1, P, M)
            "original_sizes": original_sizes,
            "reshaped_input_sizes": reshaped_input_sizes,
        }

    def postprocess(self, model_outputs: dict[str, Any], mask_threshold: float = 0.0) -> dict[str, np.ndarray]:
        masks = self.processor.image_processor.post_process_masks(
            model_outputs["pred_masks"].float(),
            model_outputs["original_sizes"],
            model_outputs["reshaped_input_sizes"],
            mask_threshold=mask_threshold,
            binarize=True,
        )[0]  # (P, M, H, W)
        scores = model_outputs["iou_scores"][0].float()  # (P, M)
        best = scores.argmax(dim=-1)  # (P,)
        prompts = torch.arange(scores.shape[0])
        return {
            "masks": masks[prompts, best].bool().numpy(),  # (P, H, W)
            "scores": scores[prompts, best].numpy(),  # (P,)
        }


# ------------------------------------------------------------------------------------------- registration
def icmoe_custom_pipelines() -> dict[str, dict[str, Any]]:
    """The `custom_pipelines` entry of `config.json` that points `pipeline()` at this file."""
    module = Path(__file__).stem
    return {
        ICMOE_PIPELINE_TASK: {
            "impl": f"{module}.{IcMoeSamSegmentationPipeline.__name__}",
            "pt": [AutoModelForMaskGeneration.__name__],
            "type": "image",
        }
    }


def register_icmoe_pipeline() -> None:
    """Registers the task with `transformers.pipeline` in this process (model objects and folders without
    `custom_pipelines`). Idempotent."""
    registered = PIPELINE_REGISTRY.supported_tasks.get(ICMOE_PIPELINE_TASK)
    if registered is not None and registered["impl"] is IcMoeSamSegmentationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        ICMOE_PIPELINE_TASK,
        pipeline_class=IcMoeSamSegmentationPipeline,
        pt_model=AutoModelForMaskGeneration,
        type="image",
    )


def save_pretrained_with_pipeline(
    model: PreTrainedModel,
    processor: SamProcessor,
    save_directory: str | os.PathLike,
    **save_kwargs,
) -> None:
    """Saves `model` and `processor` with this pipeline, so that the folder (or the Hub repo it is pushed to) loads
    with `pipeline("medical-mask-segmentation", model=folder, trust_remote_code=True)`.

    Writes what `model.save_pretrained` writes (`config.json` now with `custom_pipelines`, the weights, the model's
    remote code) plus this file and the processor's files.

    Args:
        model: the model to save (an IC-MoE SAM, or any SAM mask-generation model).
        processor: its `SamProcessor`.
        save_directory: the folder to write.
        save_kwargs: passed to `model.save_pretrained` (`is_main_process`, `max_shard_size`, ...).
    """
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"`model` must be a transformers PreTrainedModel, got {type(model).__name__}.")
    if hasattr(model, "semantic_head"):  # a prompt-free model: this pipeline's prompts have nothing to drive
        raise ValueError(
            f"{type(model).__name__} segments without prompts; save it with `save_semantic_pretrained_with_pipeline` "
            "(the image-segmentation pipeline)."
        )
    save_with_custom_pipeline(
        model, processor, save_directory, IcMoeSamSegmentationPipeline, icmoe_custom_pipelines(), **save_kwargs
    )


def save_with_custom_pipeline(
    model: PreTrainedModel,
    processor: SamProcessor,
    save_directory: str | os.PathLike,
    pipeline_class: type[Pipeline],
    custom_pipelines: dict[str, dict[str, Any]],
    **save_kwargs,
) -> None:
    """Writes `model` with `custom_pipelines` in its config, the file of `pipeline_class` (and the files it imports),
    and `processor`: what `pipeline(task, model=folder, trust_remote_code=True)` needs."""
    if not isinstance(processor, SamProcessor):
        raise ValueError(f"`processor` must be a SamProcessor, got {type(processor).__name__}.")
    os.makedirs(save_directory, exist_ok=True)
    model.config.custom_pipelines = custom_pipelines
    custom_object_save(pipeline_class, save_directory)
    model.save_pretrained(save_directory, **save_kwargs)
    processor.save_pretrained(save_directory)


__all__ = [
    "ICMOE_PIPELINE_TASK",
    "IcMoeSamSegmentationPipeline",
    "icmoe_custom_pipelines",
    "load_medical_image",
    "register_icmoe_pipeline",
    "save_pretrained_with_pipeline",
    "to_uint8_rgb",
]
