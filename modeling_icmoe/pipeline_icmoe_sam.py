"""Prompt-driven medical image segmentation with IC-MoE SAM, as a `transformers` pipeline.

IC-MoE (Zhang et al., arXiv 2510.17684) fine-tunes SAM for medical images; like SAM it segments what a box or a
few points point at. This file holds `IcMoeSamSegmentationPipeline` (task `"medical-mask-segmentation"`) and
`save_pretrained_with_pipeline`, which saves a model so that `pipeline(task, model=folder_or_repo,
trust_remote_code=True)` finds this pipeline. The image normalisation and the prompt rules it applies are those of
`imaging.py`, its one import from this package (copied beside it as remote code).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForMaskGeneration, PreTrainedModel, SamProcessor
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline

from . import imaging
from .imaging import DEFAULT_INTENSITY_PERCENTILES as _PERCENTILES

ICMOE_PIPELINE_TASK = "medical-mask-segmentation"
_PROMPT_KEYS = ("input_boxes", "input_points", "input_labels")


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
        imaging.check_boxes(boxes, image_size)
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
        imaging.check_points(points, image_size)
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
        params["window"] = imaging.resolve_window(window)
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
        intensity_percentiles: tuple[float, float] = _PERCENTILES,
        window: tuple[float, float] | None = None,
        timeout: float | None = None,
    ) -> dict[str, torch.Tensor]:
        if "image" not in inputs:
            raise ValueError(f"An input dict needs an `image` key, got keys {sorted(inputs)}.")
        unknown = sorted(set(inputs) - {"image", *_PROMPT_KEYS})
        if unknown:
            raise ValueError(f"Unknown input keys {unknown}; expected `image` and {list(_PROMPT_KEYS)}.")
        image = imaging.load_medical_image(
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


# The image rules moved to `imaging.py`; their old names here keep working for one release, with a warning.
_MOVED_TO_IMAGING = ("COUNTED_INTENSITY_RANGE", "CT_WINDOWS", "DEFAULT_INTENSITY_PERCENTILES", "SCALE_SLAB_VALUES",
                     "load_medical_image", "resolve_window", "scale_intensities", "to_uint8_rgb")


def __getattr__(name: str):
    if name in _MOVED_TO_IMAGING:
        warnings.warn(f"`pipeline_icmoe_sam.{name}` moved to `modeling_icmoe.imaging.{name}`; the old name will be "
                      "removed in the next release.", DeprecationWarning, stacklevel=2)
        return getattr(imaging, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ICMOE_PIPELINE_TASK",
    "IcMoeSamSegmentationPipeline",
    "icmoe_custom_pipelines",
    "register_icmoe_pipeline",
    "save_pretrained_with_pipeline",
]
