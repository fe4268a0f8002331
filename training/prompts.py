"""Prompts derived from ground-truth masks: boxes (jittered while training, exact at evaluation) and points.

Boxes come exactly from the full-resolution mask in the data pipeline; jitter and point sampling happen here on
batched tensors with a generator seeded by the training step, so a resumed run draws the same prompts as an
uninterrupted one whatever the data-loader workers did.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from modeling_icmoe.imaging import mask_box  # noqa: F401  (one box rule for training, evaluation and prediction)


def jitter_boxes(
    boxes: torch.Tensor, *, fraction: float, image_sizes: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Moves each box edge by up to `fraction` of the box's width/height, clamped to the image.

    Args:
        boxes (`torch.Tensor` of shape `(B, P, 4)`): `x0, y0, x1, y1` in the model's input frame.
        image_sizes (`torch.Tensor` of shape `(B, 2)`): `(height, width)` of the resized image in that frame.
    """
    if fraction <= 0:
        return boxes
    width = (boxes[..., 2] - boxes[..., 0]).clamp(min=1.0)
    height = (boxes[..., 3] - boxes[..., 1]).clamp(min=1.0)
    scale = torch.stack([width, height, width, height], dim=-1)  # (B, P, 4)
    noise = torch.rand(boxes.shape, generator=generator).to(boxes.device) * 2 - 1
    jittered = boxes + noise.to(boxes.dtype) * fraction * scale
    limits = image_sizes.flip(-1).to(boxes.dtype)[:, None, :]  # (B, 1, 2): width, height
    x0y0 = torch.minimum(jittered[..., :2].clamp(min=0), limits - 1)
    x1y1 = torch.maximum(torch.minimum(jittered[..., 2:], limits), x0y0 + 1)
    return torch.cat([x0y0, x1y1], dim=-1)


def sample_points(
    masks: torch.Tensor, *, num_points: int, input_size: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Points inside each mask, in the model's input frame.

    Args:
        masks (`torch.Tensor` of shape `(B, P, h, w)`): binary masks covering the padded input square.
        input_size: side of the padded input square (the frame of `pixel_values`).
        generator: random points uniformly inside the mask when given; else the deterministic most interior
            pixel (largest distance to the background), repeated, for evaluation.

    Returns:
        `torch.Tensor` of shape `(B, P, num_points, 2)` with `x, y` coordinates.
    """
    batch, prompts, height, width = masks.shape
    flat = masks.reshape(batch * prompts, height * width).float()
    if flat.sum(dim=1).min() == 0:
        raise ValueError("Cannot sample a point prompt inside an empty mask.")
    if generator is not None:
        index = torch.multinomial(flat.cpu(), num_points, replacement=True, generator=generator).to(masks.device)
        offsets = torch.rand(batch * prompts, num_points, 2, generator=generator).to(masks.device)
    else:
        depth = _interior_depth(masks.reshape(batch * prompts, 1, height, width).float())
        index = depth.reshape(batch * prompts, -1).argmax(dim=1, keepdim=True).expand(-1, num_points)
        offsets = torch.full((batch * prompts, num_points, 2), 0.5, device=masks.device)
    xy = torch.stack([index % width, index // width], dim=-1).float() + offsets  # (B*P, n, 2) in mask pixels
    return (xy * (input_size / width)).reshape(batch, prompts, num_points, 2)


def _interior_depth(masks: torch.Tensor) -> torch.Tensor:
    """How many 3x3 erosions each foreground pixel survives: a cheap stand-in for the distance transform."""
    depth = torch.zeros_like(masks)
    current = masks
    while current.any():
        depth += current
        # Zero padding: outside the image counts as background, so even a full mask erodes away.
        current = -F.max_pool2d(-F.pad(current, (1, 1, 1, 1)), 3, stride=1)
    return depth


def prompt_inputs(batch: dict, *, prompt: str, num_points: int, box_jitter: float, generator) -> dict:
    """Model inputs for `batch` under the chosen prompt kind. `generator=None` means evaluation: exact boxes and
    the most interior point; otherwise boxes are jittered and points drawn at random inside the mask."""
    if prompt == "none":  # the prompt-free model: the image alone
        return {"pixel_values": batch["pixel_values"]}
    inputs = {"pixel_values": batch["pixel_values"], "multimask_output": prompt == "point"}
    if "box" in prompt:
        boxes = batch["input_boxes"]
        if generator is not None:
            boxes = jitter_boxes(
                boxes, fraction=box_jitter, image_sizes=batch["reshaped_input_sizes"], generator=generator
            )
        inputs["input_boxes"] = boxes
    if "point" in prompt:
        points = sample_points(
            batch["labels"], num_points=num_points, input_size=batch["pixel_values"].shape[-1], generator=generator
        )
        inputs["input_points"] = points
        inputs["input_labels"] = torch.ones(points.shape[:3], dtype=torch.long, device=points.device)
    return inputs
