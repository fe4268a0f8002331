"""Initialisation of a SAM trained from scratch, and tiny SAM configurations.

`SamModel(config)` initialises the vision encoder from `SamVisionConfig.initializer_range` (1e-10), which leaves
it near zero, and gives the positional matrix a std of about `hidden_size // 2`. A SAM that is to be trained
from scratch (the offline stand-in) or that tests compare against needs real weights: PyTorch's default
initialisation of every layer, as the original SAM uses, and an N(0, 1) positional matrix.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig


@torch.no_grad()
def init_sam_from_scratch(model: SamModel, seed: int | None = None) -> SamModel:
    """Re-initialises every SAM layer with PyTorch's defaults and the positional matrix with N(0, 1), in place."""
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding, nn.LayerNorm)):
                module.reset_parameters()
        model.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)
        if model.vision_encoder.pos_embed is not None:
            model.vision_encoder.pos_embed.normal_(0.0, 0.02)
        for layer in model.vision_encoder.layers:
            if getattr(layer.attn, "use_rel_pos", False):
                layer.attn.rel_pos_h.normal_(0.0, 0.02)
                layer.attn.rel_pos_w.normal_(0.0, 0.02)
        model.tie_weights()
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    return model


def tiny_sam_config(
    *,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    output_channels: int = 16,
) -> SamConfig:
    """A SAM small enough for a forward pass in milliseconds, with the fields that must agree kept consistent."""
    vision = SamVisionConfig(
        hidden_size=hidden_size,
        output_channels=output_channels,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        window_size=4,
        global_attn_indexes=[num_hidden_layers - 1],
        num_pos_feats=output_channels // 2,
        mlp_dim=hidden_size * 2,
    )
    prompt = SamPromptEncoderConfig(hidden_size=output_channels, image_size=image_size, patch_size=patch_size)
    decoder = SamMaskDecoderConfig(
        hidden_size=output_channels, mlp_dim=output_channels * 2, num_attention_heads=2, iou_head_hidden_dim=16
    )
    return SamConfig(
        vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict()
    )
