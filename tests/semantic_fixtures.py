"""A tiny prompt-free model that predicts several classes, its processor and saved folder, and what the pipeline must
return for an image, computed with SAM's own post-processing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import SamProcessor

from modeling_icmoe import (
    IcMoeAdapterConfig,
    IcMoeSamForSemanticSegmentation,
    IcMoeSamSemanticSegmentationPipeline,
    save_semantic_pretrained_with_pipeline,
)
from modeling_icmoe.layer import IcMoeLayer

CLASSES = {0: "background", 1: "liver", 2: "kidney", 3: "spleen"}


def semantic_model(base_dir, decoder: str = "mask_tokens") -> IcMoeSamForSemanticSegmentation:
    """A tiny prompt-free model whose experts and class hypernetworks are random (not their no-op or SAM-copied start),
    so that several classes win somewhere."""
    model = IcMoeSamForSemanticSegmentation.from_pretrained(
        base_dir, id2label=CLASSES, semantic_decoder=decoder, icmoe_config=IcMoeAdapterConfig(expert_rank=4)
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, IcMoeLayer)):
            layer.experts.up_proj.copy_(torch.randn(layer.experts.up_proj.shape, generator=generator) * 0.3)
        if decoder == "mask_tokens":
            for mlp in model.semantic_head.hypernetworks:
                mlp.proj_out.weight.copy_(torch.randn(mlp.proj_out.weight.shape, generator=generator) * 0.5)
    return model.eval()


def save_semantic_model(folder, base_dir) -> Path:
    """`semantic_model(base_dir)` and the base's processor saved with the image-segmentation pipeline."""
    save_semantic_pretrained_with_pipeline(semantic_model(base_dir), SamProcessor.from_pretrained(base_dir), folder)
    return Path(folder)


def pipeline_of(folder) -> IcMoeSamSemanticSegmentationPipeline:
    """The package's pipeline around a saved folder's model and processor (no remote code)."""
    return IcMoeSamSemanticSegmentationPipeline(model=IcMoeSamForSemanticSegmentation.from_pretrained(folder).eval(),
                                                processor=SamProcessor.from_pretrained(folder), device=-1)


def expected_class_map(model, processor, image: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """The class map and class probabilities at the original size, by SAM's own `post_process_masks`."""
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        logits = model(pixel_values=inputs["pixel_values"]).logits  # (1, L, h, w)
    full = processor.post_process_masks(logits[:, :, None], inputs["original_sizes"], inputs["reshaped_input_sizes"],
                                        binarize=False)[0][:, 0]  # (L, H, W)
    return full.argmax(dim=0).numpy(), full.softmax(dim=0)


def segments_class_map(segments: list[dict], size: tuple[int, int]) -> np.ndarray:
    """The pipeline's segments back as one class-id map (each pixel in exactly one segment)."""
    label2id = {name: index for index, name in CLASSES.items()}
    class_map = np.full(size, -1)
    for segment in segments:
        mask = np.asarray(segment["mask"])
        assert segment["mask"].mode == "L" and set(np.unique(mask)) <= {0, 255}
        assert (class_map[mask == 255] == -1).all(), "segments overlap"
        class_map[mask == 255] = label2id[segment["label"]]
    assert (class_map >= 0).all(), "segments leave pixels out"
    return class_map
