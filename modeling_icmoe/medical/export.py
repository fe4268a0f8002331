"""ONNX export of an IC-MoE (or plain) SAM, split the way SAM deployments split it.

- `image_encoder.onnx`: `pixel_values (B, 3, S, S)` -> `image_embeddings (B, C, h, w)`, with the IC-MoE experts and
  their routing inside: run once per image.
- `prompt_decoder_boxes.onnx`: `image_embeddings`, `input_boxes (B, P, 4)` -> `iou_scores (B, P, 1)`,
  `pred_masks (B, P, 1, 4h, 4w)`: one mask per box.
- `prompt_decoder_points.onnx`: `image_embeddings`, `input_points (B, P, N, 2)`, `input_labels (B, P, N)` ->
  `iou_scores (B, P, 3)`, `pred_masks (B, P, 3, 4h, 4w)`: SAM's three candidate masks per point prompt.

A prompt-free model (`IcMoeSamForSemanticSegmentation`) needs no prompt, so it is one graph:

- `semantic_segmentation.onnx`: `pixel_values (B, 3, S, S)` -> `logits (B, num_labels, 4h, 4w)`, the class logits
  (the background is class 0; `export_config.json` and the README name the classes).

Coordinates are in the processor's resized input frame, as `SamProcessor` returns them; masks are low-resolution
logits that `SamProcessor.post_process_masks` brings to the image size. Every exported file is run with
onnxruntime on a sample and compared with PyTorch before the export is accepted: a model whose ONNX graph does not
reproduce its masks is refused, and nothing is left in the output folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Largest difference of mask logits and IoU scores between onnxruntime and PyTorch that counts as faithful:
# `TOLERANCE + RELATIVE_TOLERANCE * |PyTorch value|`, so that large logits of big encoders are judged fairly.
TOLERANCE = 1e-3
RELATIVE_TOLERANCE = 1e-3
README_TEMPLATE = """# {title}: ONNX export

Exported by `icmoe-sam export` from `{source}`. The image encoder (with the IC-MoE experts and their routing) runs
once per image; the prompt decoders run per prompt on its embeddings, as SAM deployments split the model.

| file | inputs | outputs |
|---|---|---|
| `image_encoder.onnx` | `pixel_values` float32 (B, 3, {size}, {size}) | `image_embeddings` (B, {channels}, {grid}, {grid}) |
| `prompt_decoder_boxes.onnx` | `image_embeddings`, `input_boxes` float32 (B, P, 4) | `iou_scores` (B, P, 1), `pred_masks` (B, P, 1, {mask}, {mask}) |
| `prompt_decoder_points.onnx` | `image_embeddings`, `input_points` float32 (B, P, N, 2), `input_labels` int64 (B, P, N) | `iou_scores` (B, P, 3), `pred_masks` (B, P, 3, {mask}, {mask}) |

Box and point coordinates are in the resized input frame (what `SamProcessor` returns); `pred_masks` are logits at
low resolution (threshold at 0 after `post_process_masks`). Checked against PyTorch at export: largest difference
{difference:.2e} (tolerance {tolerance:g}).

```python
import numpy as np
import onnxruntime as ort
from PIL import Image
from transformers import SamProcessor

processor = SamProcessor.from_pretrained("{folder}")
encoder = ort.InferenceSession("{folder}/image_encoder.onnx")
decoder = ort.InferenceSession("{folder}/prompt_decoder_boxes.onnx")

image = np.asarray(Image.open("scan.png").convert("RGB"))
inputs = processor(images=image, input_boxes=[[[20, 30, 120, 140]]], return_tensors="np")
(embeddings,) = encoder.run(None, {{"pixel_values": inputs["pixel_values"].astype(np.float32)}})
scores, masks = decoder.run(None, {{"image_embeddings": embeddings, "input_boxes": inputs["input_boxes"].astype(np.float32)}})
import torch
full = processor.post_process_masks(torch.from_numpy(masks), inputs["original_sizes"], inputs["reshaped_input_sizes"])
mask = full[0][0, 0].numpy()  # (H, W) bool for the first box
```
"""


SEMANTIC_README_TEMPLATE = """# {title}: ONNX export

Exported by `icmoe-sam export` from `{source}`: the prompt-free model (the image encoder with the IC-MoE experts and
their routing, and the class decoder) as one graph.

| file | inputs | outputs |
|---|---|---|
| `semantic_segmentation.onnx` | `pixel_values` float32 (B, 3, {size}, {size}) | `logits` (B, {num_labels}, {mask}, {mask}) |

`logits` are class logits at low resolution in the padded input frame; each pixel's class is the argmax after they
are brought to the image size (crop the resized image's part, resize). Classes (`export_config.json`, `id2label`):
{classes}. Checked against PyTorch at export: largest difference {difference:.2e} (tolerance {tolerance:g}).

```python
import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from transformers import SamProcessor

processor = SamProcessor.from_pretrained("{folder}")
session = ort.InferenceSession("{folder}/semantic_segmentation.onnx")

image = np.asarray(Image.open("scan.png").convert("RGB"))
inputs = processor(images=image, return_tensors="np")
(logits,) = session.run(None, {{"pixel_values": inputs["pixel_values"].astype(np.float32)}})
full = processor.post_process_masks(torch.from_numpy(logits)[:, :, None], inputs["original_sizes"],
                                    inputs["reshaped_input_sizes"], binarize=False)
class_map = full[0][:, 0].argmax(dim=0).numpy()  # (H, W) class ids
```
"""


class ImageEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_embeddings(pixel_values)


class BoxDecoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image_embeddings: torch.Tensor, input_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(image_embeddings=image_embeddings, input_boxes=input_boxes, multimask_output=False)
        return outputs.iou_scores, outputs.pred_masks


class PointDecoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(
        self, image_embeddings: torch.Tensor, input_points: torch.Tensor, input_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(
            image_embeddings=image_embeddings, input_points=input_points, input_labels=input_labels,
            multimask_output=True,
        )
        return outputs.iou_scores, outputs.pred_masks


class SemanticSegmenter(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def _samples(model) -> dict[str, tuple]:
    """Example inputs of each part, with real shapes; values chosen to exercise every path (two prompts)."""
    vision = model.config.vision_config
    size, grid = vision.image_size, vision.image_size // vision.patch_size
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, size, size, generator=generator)
    if _is_semantic(model):
        return {"semantic_segmentation": (pixel_values,)}
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixel_values)
    boxes = torch.tensor([[[0.1, 0.2, 0.6, 0.7], [0.3, 0.1, 0.9, 0.5]]]) * size
    points = torch.tensor([[[[0.4, 0.45], [0.2, 0.3]], [[0.7, 0.3], [0.6, 0.8]]]]) * size
    labels = torch.tensor([[[1, 0], [1, 1]]], dtype=torch.long)
    assert embeddings.shape[-1] == grid
    return {
        "image_encoder": (pixel_values,),
        "prompt_decoder_boxes": (embeddings, boxes),
        "prompt_decoder_points": (embeddings, points, labels),
    }


PARTS = {
    "image_encoder": (ImageEncoder, ["pixel_values"], ["image_embeddings"],
                      {"pixel_values": {0: "batch"}, "image_embeddings": {0: "batch"}}),
    "prompt_decoder_boxes": (BoxDecoder, ["image_embeddings", "input_boxes"], ["iou_scores", "pred_masks"],
                             {"image_embeddings": {0: "batch"}, "input_boxes": {0: "batch", 1: "prompts"},
                              "iou_scores": {0: "batch", 1: "prompts"}, "pred_masks": {0: "batch", 1: "prompts"}}),
    "prompt_decoder_points": (PointDecoder, ["image_embeddings", "input_points", "input_labels"],
                              ["iou_scores", "pred_masks"],
                              {"image_embeddings": {0: "batch"}, "input_points": {0: "batch", 1: "prompts", 2: "points"},
                               "input_labels": {0: "batch", 1: "prompts", 2: "points"},
                               "iou_scores": {0: "batch", 1: "prompts"}, "pred_masks": {0: "batch", 1: "prompts"}}),
}
SEMANTIC_PARTS = {
    "semantic_segmentation": (SemanticSegmenter, ["pixel_values"], ["logits"],
                              {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}),
}


def _is_semantic(model) -> bool:
    from ..modeling_icmoe_semantic import IcMoeSamForSemanticSegmentation

    return isinstance(model, IcMoeSamForSemanticSegmentation)


def check_exportable(model) -> None:
    """Refuses what an ONNX graph of this export cannot represent faithfully, saying why."""
    from transformers import SamModel

    if not isinstance(model, SamModel):
        raise ValueError(f"Only SAM models (SamModel, IcMoeSamModel) export; got {type(model).__name__}.")
    if any(type(m).__name__.startswith("Lora") or hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError(
            "The model holds unmerged LoRA layers; merge them first (peft's merge_and_unload(), as training/run.py "
            "saves LoRA models)."
        )
    if model.config.vision_config.image_size % model.config.vision_config.patch_size:
        raise ValueError("The vision config's image_size is not a multiple of its patch_size.")


def export_onnx(model, processor, output_dir: str | Path, *, opset: int = 18, source: str = "") -> dict:
    """Writes the ONNX files (three for a prompted model, one for a prompt-free one), the processor, the report
    (`export_config.json`, with the classes of a prompt-free model) and a README into `output_dir`; returns the report.

    Raises `ValueError` (and leaves no partial folder behind) when the model cannot be exported or a part's ONNX
    outputs differ from PyTorch's by more than `TOLERANCE + RELATIVE_TOLERANCE * |value|`. The model is exported in
    float32 (a half-precision model is converted in place).
    """
    import onnxruntime

    check_exportable(model)
    model = model.float().eval()
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"{output_dir} exists and is not empty; choose a new folder.")
    partial = output_dir.with_name(output_dir.name + ".partial")
    if partial.exists():
        raise ValueError(f"{partial} exists (left by an interrupted export?); remove it first.")
    partial.mkdir(parents=True)
    samples = _samples(model)
    semantic = _is_semantic(model)
    report = {"opset": opset, "tolerance": TOLERANCE, "parts": {}}
    if semantic:
        report["id2label"] = {str(index): name for index, name in model.config.id2label.items()}
    try:
        for name, (wrapper, inputs, outputs, axes) in (SEMANTIC_PARTS if semantic else PARTS).items():
            module, args = wrapper(model).eval(), samples[name]
            path = partial / f"{name}.onnx"
            with torch.no_grad():
                torch.onnx.export(
                    module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                    opset_version=opset, dynamo=False,
                )
                expected = module(*args)
            expected = expected if isinstance(expected, tuple) else (expected,)
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            actual = session.run(None, {key: value.numpy() for key, value in zip(inputs, args)})
            difference = max(float(np.abs(a - e.numpy()).max()) for a, e in zip(actual, expected))
            excess = max(float((np.abs(a - e.numpy()) - RELATIVE_TOLERANCE * np.abs(e.numpy())).max())
                         for a, e in zip(actual, expected))
            if not excess <= TOLERANCE:
                raise ValueError(
                    f"{name}: onnxruntime and PyTorch differ by up to {difference:.3g} (tolerance {TOLERANCE:g} + "
                    f"{RELATIVE_TOLERANCE:g} x |value|); the "
                    "model is not exported, since its ONNX graph would not reproduce its masks."
                )
            report["parts"][name] = {"file": path.name, "max_difference": difference}
        processor.save_pretrained(partial)
        vision = model.config.vision_config
        grid = vision.image_size // vision.patch_size
        worst = max(part["max_difference"] for part in report["parts"].values())
        (partial / "export_config.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (partial / "README.md").write_text((SEMANTIC_README_TEMPLATE if semantic else README_TEMPLATE).format(
            title=type(model).__name__, source=source or "a model in memory", size=vision.image_size,
            channels=model.config.vision_config.output_channels, grid=grid, mask=4 * grid, difference=worst,
            tolerance=TOLERANCE, folder=str(output_dir), num_labels=model.config.num_labels,
            classes=", ".join(f"{index} `{name}`" for index, name in report.get("id2label", {}).items()),
        ), encoding="utf-8")
    except Exception:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if output_dir.exists():
        output_dir.rmdir()
    partial.rename(output_dir)
    return report
