"""Prompt-free medical image segmentation with IC-MoE SAM, as `transformers`' `"image-segmentation"` pipeline.

`IcMoeSamForSemanticSegmentation` segments every class of its `id2label` without a box or a point. This file holds
what turns its logits into class maps at the original image size (`class_logits_at_original_size`,
`class_maps_at_original_size`: one rule for training's evaluation, this pipeline and `icmoe-sam predict`), the
pipeline `IcMoeSamSemanticSegmentationPipeline`, and `save_semantic_pretrained_with_pipeline`, which saves a model so
that `pipeline("image-segmentation", model=folder_or_repo, trust_remote_code=True)` finds this pipeline.

The file imports only `pipeline_icmoe_sam` of this package (the image normalisation the prompted pipeline applies),
which `transformers` copies with it as remote code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.nn import functional as F
from transformers import AutoModelForSemanticSegmentation, PreTrainedModel, SamProcessor
from transformers.pipelines import Pipeline

from .imaging import DEFAULT_INTENSITY_PERCENTILES, load_medical_image
from .pipeline_icmoe_sam import image_preprocess_params, sam_processor_of, save_with_custom_pipeline

SEMANTIC_PIPELINE_TASK = "image-segmentation"


# ------------------------------------------------------------------------------------------ post-processing
def class_logits_at_original_size(
    logits: torch.Tensor, input_size: int, reshaped_sizes, original_sizes
) -> list[torch.Tensor]:
    """Each image's class logits `(num_labels, H, W)` at its original size, in float32: the logits `(B, L, h, w)`
    brought to the padded `input_size` square, cropped to the resized image (`reshaped_sizes`, one `(height, width)`
    per image), then resized to `original_sizes` (bilinear, as SAM's `post_process_masks` does). One image at a time,
    so that a batch never holds more than one image's logits at the input size."""
    results = []
    for image_logits, reshaped, original in zip(logits, reshaped_sizes, original_sizes):
        padded = F.interpolate(image_logits[None].float(), size=(input_size, input_size), mode="bilinear",
                               align_corners=False)  # (1, L, S, S)
        height, width = (int(v) for v in reshaped)
        resized = F.interpolate(padded[:, :, :height, :width], size=tuple(int(v) for v in original), mode="bilinear",
                                align_corners=False)  # (1, L, H, W)
        results.append(resized[0])
    return results


def class_map_dtype(num_labels: int) -> type:
    """The numpy integer type of class maps of `num_labels` classes: uint8 up to 256 classes, else int32."""
    return np.uint8 if num_labels <= 256 else np.int32


def class_maps_at_original_size(logits: torch.Tensor, input_size: int, reshaped_sizes, original_sizes) -> list:
    """Predicted class maps `(H, W)` (numpy, of `class_map_dtype`) at each image's original size: the argmax of
    `class_logits_at_original_size`."""
    dtype = class_map_dtype(logits.shape[1])
    return [image_logits.argmax(dim=0).numpy().astype(dtype)
            for image_logits in class_logits_at_original_size(logits, input_size, reshaped_sizes, original_sizes)]


# ---------------------------------------------------------------------------------------------- pipeline
class IcMoeSamSemanticSegmentationPipeline(Pipeline):
    """Segments every class of a prompt-free IC-MoE SAM (`IcMoeSamForSemanticSegmentation`) in medical images.

    Example:

    ```python
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model="org/icmoe-sam-organs", trust_remote_code=True)
    for segment in segmenter("slice.png", window="soft_tissue"):
        segment["label"], segment["score"], segment["mask"].size  # "liver", 0.93, (W, H)
    ```

    With this package installed, the pipeline also loads without remote code:
    `pipeline("image-segmentation", model=folder, pipeline_class=IcMoeSamSemanticSegmentationPipeline)`, or
    `IcMoeSamSemanticSegmentationPipeline(model=model, processor=processor)` for a model in memory.

    Call arguments:
        images: one image or a list of images: file path, http(s) URL, PIL image, numpy array or torch tensor;
            grayscale, RGB or RGBA; 8-bit, 16-bit, float or bool (see `to_uint8_rgb`). Volumes are segmented slice by
            slice by `icmoe-sam predict`.
        batch_size (`int`, *optional*): images per forward pass, for a list of images.
        intensity_percentiles (`tuple[float, float]`, defaults to `(0.5, 99.5)`): intensity clipping of images that
            are not 8-bit.
        window (`str` or `tuple[float, float]`, *optional*): CT window, `(level, width)` in Hounsfield units or a
            preset name (`soft_tissue`, `lung`, `bone`, ...), instead of the percentile rule. Use the window the model
            was trained with.
        timeout (`float`, *optional*): timeout of URL downloads, in seconds.

    Returns:
        Per image, `transformers`' image-segmentation format: a list with one dict per class present in the predicted
        class map (each pixel's argmax over the classes), in class-id order, **the background (class 0) included**
        when present, as `transformers`' semantic post-processing returns every class present:

        - `label` (`str`): the class name (`config.id2label`);
        - `mask` (`PIL.Image`, mode `"L"`, the original image size): 255 where the class was predicted, else 0;
        - `score` (`float`): the class's mean predicted probability (softmax over the classes) over its mask, where
          `transformers`' semantic path gives `None`.

        A list of such lists for a list of images.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self.model, "semantic_head"):
            raise ValueError(
                f"{type(self).__name__} runs prompt-free IC-MoE models (IcMoeSamForSemanticSegmentation), got "
                f"{type(self.model).__name__}; prompted models use the `medical-mask-segmentation` pipeline."
            )
        self.processor = sam_processor_of(self)
        # `batch_size` collates with the image processor; SAM's inputs all share one padded size.
        self.image_processor = self.processor.image_processor

    def _sanitize_parameters(
        self,
        intensity_percentiles: tuple[float, float] | None = None,
        window: str | Sequence[float] | None = None,
        timeout: float | None = None,
        **kwargs,
    ):
        if kwargs:
            raise ValueError(f"Unknown arguments for {type(self).__name__}: {sorted(kwargs)}.")
        return image_preprocess_params(intensity_percentiles, window, timeout), {}, {}

    def __call__(self, images: Any, **kwargs) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        if isinstance(images, (list, tuple)) and not images:
            raise ValueError("Got an empty list of images.")
        return super().__call__(list(images) if isinstance(images, tuple) else images, **kwargs)

    def preprocess(
        self,
        image: Any,
        intensity_percentiles: tuple[float, float] = DEFAULT_INTENSITY_PERCENTILES,
        window: tuple[float, float] | None = None,
        timeout: float | None = None,
    ) -> dict[str, torch.Tensor]:
        pixels = load_medical_image(image, timeout=timeout, intensity_percentiles=intensity_percentiles, window=window)
        encoding = self.processor(images=pixels, return_tensors="pt")
        return {
            "pixel_values": encoding["pixel_values"].to(self.dtype),  # (1, 3, S, S)
            "original_sizes": encoding["original_sizes"],  # (1, 2)
            "reshaped_input_sizes": encoding["reshaped_input_sizes"],  # (1, 2)
        }

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pixel_values = model_inputs["pixel_values"]
        return {
            "logits": self.model(pixel_values=pixel_values).logits,  # (B, L, h, w)
            "input_size": torch.full((pixel_values.shape[0],), pixel_values.shape[-1]),  # (B,)
            "original_sizes": model_inputs["original_sizes"],
            "reshaped_input_sizes": model_inputs["reshaped_input_sizes"],
        }

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        (logits,) = class_logits_at_original_size(
            model_outputs["logits"].cpu(), int(model_outputs["input_size"][0]), model_outputs["reshaped_input_sizes"],
            model_outputs["original_sizes"],
        )  # (L, H, W)
        class_map = logits.argmax(dim=0)  # (H, W), as `class_maps_at_original_size`
        probabilities = logits.softmax(dim=0)
        segments = []
        for class_id in torch.unique(class_map).tolist():
            mask = class_map == class_id
            segments.append({
                "score": float(probabilities[class_id][mask].mean()),
                "label": self.model.config.id2label[class_id],
                "mask": PIL.Image.fromarray(mask.numpy().astype(np.uint8) * 255),  # mode "L"
            })
        return segments


# ------------------------------------------------------------------------------------------- registration
def icmoe_semantic_custom_pipelines() -> dict[str, dict[str, Any]]:
    """The `custom_pipelines` entry of `config.json` that points `pipeline("image-segmentation", ...)` at this file."""
    return {
        SEMANTIC_PIPELINE_TASK: {
            "impl": f"{Path(__file__).stem}.{IcMoeSamSemanticSegmentationPipeline.__name__}",
            "pt": [AutoModelForSemanticSegmentation.__name__],
            "type": "image",
        }
    }


def save_semantic_pretrained_with_pipeline(
    model: PreTrainedModel,
    processor: SamProcessor,
    save_directory: str | os.PathLike,
    **save_kwargs,
) -> None:
    """Saves a prompt-free model and its processor with this pipeline, so that the folder (or the Hub repo it is
    pushed to) loads with `pipeline("image-segmentation", model=folder, trust_remote_code=True)`.

    Writes what `model.save_pretrained` writes (`config.json` now with `custom_pipelines`, the weights, the model's
    remote code) plus this file, the file it imports and the processor's files.

    Args:
        model: an `IcMoeSamForSemanticSegmentation`.
        processor: its `SamProcessor`.
        save_directory: the folder to write.
        save_kwargs: passed to `model.save_pretrained` (`state_dict`, `is_main_process`, `max_shard_size`, ...).
    """
    if not hasattr(model, "semantic_head") or not isinstance(model, PreTrainedModel):
        raise ValueError(
            f"`model` must be a prompt-free IcMoeSamForSemanticSegmentation, got {type(model).__name__}; prompted "
            "models are saved with `save_pretrained_with_pipeline`."
        )
    save_with_custom_pipeline(model, processor, save_directory, IcMoeSamSemanticSegmentationPipeline,
                              icmoe_semantic_custom_pipelines(), **save_kwargs)


__all__ = [
    "IcMoeSamSemanticSegmentationPipeline",
    "SEMANTIC_PIPELINE_TASK",
    "class_logits_at_original_size",
    "class_map_dtype",
    "class_maps_at_original_size",
    "icmoe_semantic_custom_pipelines",
    "save_semantic_pretrained_with_pipeline",
]
