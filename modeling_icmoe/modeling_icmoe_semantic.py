"""IC-MoE SAM for semantic segmentation: every class of a fixed set, segmented without a prompt.

SAM's image encoder with IC-MoE (as in `IcMoeSamModel`) and a mask decoder that needs no prompt, returning one logit
map per class, the background (class 0) included. Two ways of removing the prompt are built
(`IcMoeSamSemanticConfig.semantic_decoder`):

- `"mask_tokens"` (SAMed, Zhang & Liu 2023): SAM's mask tokens and their hypernetwork MLPs are replaced by one per
  class; the decoder runs once per image with no prompt token and SAM's "no mask" dense embedding, and class `c`'s
  logits are its token's hypernetwork output times the upscaled image embedding.
- `"queries"`: per class, a few learned tokens are given to SAM's own decoder as its prompt (the sparse prompt
  embeddings), and its single-mask output is that class's logits: one decoder pass per class, SAM's decoder otherwise
  as pretrained (learned prompts in the manner of AutoSAM and SegMoTE's prompt-free mode).

New class tokens and hypernetworks start as copies of SAM's (class `c` takes SAM's mask token `c mod 4`), so the
decoder starts from SAM's pretrained behaviour; the class queries start small and random. The image encoder and the
prompt encoder stay frozen; the decoder parts that the head uses train with it (`train_mask_decoder`), those it does
not use stay frozen (an untrained parameter would stop data-parallel training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.models.sam.modeling_sam import SamFeedForward, SamMaskDecoder
from transformers.utils import ModelOutput, logging

from .configuration_icmoe_sam import (
    SEMANTIC_FIELDS,
    IcMoeSamConfig,
    IcMoeSamSemanticConfig,
    _as_adapter_config,
)
from .layer import IcMoeRouting
from .losses import AUXILIARY_TERMS, check_class_labels, icmoe_objective, resize_masks, semantic_losses
from .modeling_icmoe_sam import IcMoeSamModel, check_label_frame

SEMANTIC_LOSS_TERMS = ("ce", "dice", *AUXILIARY_TERMS)
# `from_pretrained` keyword arguments that belong to a semantic config built around another checkpoint's.
SEMANTIC_CONFIG_KWARGS = ("id2label", "label2id", *SEMANTIC_FIELDS)

logger = logging.get_logger(__name__)


@dataclass
class IcMoeSemanticSegmenterOutput(ModelOutput):
    r"""
    Output of [`IcMoeSamForSemanticSegmentation`].

    loss (`torch.Tensor` of shape `()`, *optional*, returned when `labels` are given):
        The whole objective: cross-entropy and Dice over the classes plus IC-MoE's router terms.
    logits (`torch.Tensor` of shape `(batch_size, num_labels, height, width)`):
        Class logits at the mask decoder's resolution (4x the image embedding's: 256 x 256 for a 1024-pixel input),
        in the frame of `pixel_values` (resized and padded); the background is class 0.
    loss_terms (`dict[str, torch.Tensor]`, *optional*, returned when `labels` are given):
        Each term, detached: `ce`, `dice`, `load_balance`, `router_z`, `vote`, `pixel`, `contrastive`.
    router_probs (`tuple[torch.Tensor]`, *optional*, returned when `output_router_probs=True`):
        Every IC-MoE layer's fused votes `(batch_size, grid_height, grid_width, num_routed_experts)`.
    routing (`tuple[IcMoeRouting]`, *optional*, returned when `output_router_probs=True`):
        Everything each IC-MoE layer's router computed.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    router_probs: tuple[torch.Tensor, ...] | None = None
    routing: tuple[IcMoeRouting, ...] | None = None


def _upscaled_masks(decoder: SamMaskDecoder, image_embeddings: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
    """SAM's mask computation: `hyper_in (B, T, C/8)` times the upscaled `image_embeddings (B, C, h, w)` gives
    `(B, T, 4h, 4w)`."""
    upscaled = decoder.activation(decoder.upscale_layer_norm(decoder.upscale_conv1(image_embeddings)))
    upscaled = decoder.activation(decoder.upscale_conv2(upscaled))  # (B, C/8, 4h, 4w)
    batch, channels, height, width = upscaled.shape
    return (hyper_in @ upscaled.reshape(batch, channels, height * width)).reshape(batch, -1, height, width)


class IcMoeMaskTokenHead(nn.Module):
    """SAMed's prompt removal: one mask token and one hypernetwork MLP per class, run through SAM's decoder with no
    prompt token."""

    def __init__(self, *, hidden_size: int, num_labels: int):
        super().__init__()
        self.num_labels = num_labels
        self.class_tokens = nn.Parameter(torch.empty(num_labels, hidden_size))
        self.hypernetworks = nn.ModuleList(
            [SamFeedForward(hidden_size, hidden_size, hidden_size // 8, 3) for _ in range(num_labels)]
        )

    @torch.no_grad()
    def reset_parameters(self, decoder: SamMaskDecoder) -> None:
        """Class `c` starts as SAM's mask token `c mod num_mask_tokens` and its hypernetwork (tensors loaded from a
        checkpoint are kept)."""
        sources = [index % decoder.num_mask_tokens for index in range(self.num_labels)]
        # The whole parameter at once: a loaded parameter carries the flag that makes `init` skip it, a row view not.
        init.copy_(self.class_tokens, decoder.mask_tokens.weight[sources])
        for index, source in enumerate(sources):
            sam_mlp = decoder.output_hypernetworks_mlps[source].state_dict()
            for name, tensor in self.hypernetworks[index].named_parameters():
                init.copy_(tensor, sam_mlp[name])

    def forward(self, decoder: SamMaskDecoder, image_embeddings, image_positional_embeddings, dense_embeddings):
        batch = image_embeddings.shape[0]
        tokens = torch.cat([decoder.iou_token.weight, self.class_tokens], dim=0)  # (1 + L, C)
        tokens = tokens[None, None].expand(batch, 1, -1, -1)  # (B, 1, 1 + L, C): one "prompt" of no points
        token_out, image_out = decoder.transformer(
            point_embeddings=tokens,
            image_embeddings=image_embeddings + dense_embeddings,
            image_positional_embeddings=image_positional_embeddings,
            attention_similarity=None,
        )
        class_out = token_out[:, 0, 1:]  # (B, L, C)
        image_out = image_out.transpose(2, 3).reshape(image_embeddings.shape)  # (B, C, h, w)
        hyper_in = torch.stack([mlp(class_out[:, i]) for i, mlp in enumerate(self.hypernetworks)], dim=1)  # (B, L, C/8)
        return _upscaled_masks(decoder, image_out, hyper_in)  # (B, L, 4h, 4w)


class IcMoeQueryHead(nn.Module):
    """Learned prompts: per class, `num_query_tokens` tokens given to SAM's own decoder as its sparse prompt; the
    decoder's single-mask output for that prompt is the class's logits."""

    def __init__(self, *, hidden_size: int, num_labels: int, num_query_tokens: int):
        super().__init__()
        self.queries = nn.Parameter(torch.empty(num_labels, num_query_tokens, hidden_size))

    @torch.no_grad()
    def reset_parameters(self, decoder: SamMaskDecoder) -> None:
        # Unit-variance entries, the scale of SAM's own prompt tokens (random Fourier positional features of a
        # point, plus its learned label embedding).
        init.normal_(self.queries, std=1.0 / math.sqrt(2.0))

    def forward(self, decoder: SamMaskDecoder, image_embeddings, image_positional_embeddings, dense_embeddings):
        batch = image_embeddings.shape[0]
        prompts = self.queries[None].expand(batch, -1, -1, -1)  # (B, L, K, C): L prompts of K tokens
        masks, _ = decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=image_positional_embeddings,
            sparse_prompt_embeddings=prompts,
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=False,
        )
        return masks[:, :, 0]  # (B, L, 4h, 4w)


class IcMoeSamForSemanticSegmentation(IcMoeSamModel):
    """IC-MoE SAM that segments every class of `config.id2label` without a prompt. See the module docstring and
    [`IcMoeSamSemanticConfig`]."""

    config_class = IcMoeSamSemanticConfig
    config: IcMoeSamSemanticConfig

    def _add_task_modules(self, config: IcMoeSamSemanticConfig) -> None:
        hidden_size = config.mask_decoder_config.hidden_size
        if config.semantic_decoder == "mask_tokens":
            self.semantic_head = IcMoeMaskTokenHead(hidden_size=hidden_size, num_labels=config.num_labels)
        else:
            self.semantic_head = IcMoeQueryHead(
                hidden_size=hidden_size, num_labels=config.num_labels, num_query_tokens=config.num_query_tokens
            )

    def initialize_weights(self):
        super().initialize_weights()
        if "semantic_head" in self._modules:  # SamModel's own __init__ initialises before the head exists
            self.semantic_head.reset_parameters(self.mask_decoder)

    def reset_task_modules(self) -> None:
        self.semantic_head.reset_parameters(self.mask_decoder)

    def semantic_config_dict(self) -> dict:
        """The classes and the head, as an adapter-only checkpoint records them (JSON keys are strings)."""
        return {
            "id2label": {str(index): name for index, name in self.config.id2label.items()},
            **{name: getattr(self.config, name) for name in SEMANTIC_FIELDS},
        }

    @staticmethod
    def semantic_config_kwargs(recorded: dict) -> dict:
        """`semantic_config_dict`'s record as config keyword arguments."""
        return {**recorded, "id2label": {int(index): name for index, name in recorded["id2label"].items()}}

    def trainable_modules(self) -> list[tuple[str, nn.Module]]:
        """The adapters, the class head and, with `train_mask_decoder`, the decoder parts the head runs."""
        modules = self.adapter_modules() + [("semantic_head", self.semantic_head)]
        if self.config.icmoe_config.train_mask_decoder:
            parts = ["iou_token", "transformer", "upscale_conv1", "upscale_layer_norm", "upscale_conv2"]
            if self.config.semantic_decoder == "queries":  # SAM's own mask tokens and hypernetworks make the masks
                parts += ["mask_tokens", "output_hypernetworks_mlps"]
            modules += [(f"mask_decoder.{name}", getattr(self.mask_decoder, name)) for name in parts]
        return modules

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """A SAM or prompted IC-MoE checkpoint has no class head, by design: one line says so."""
        head_keys = {key for key in self.state_dict() if key.startswith("semantic_head.")}
        missing_head = head_keys & set(loading_info.missing_keys)
        super()._adjust_missing_and_unexpected_keys(loading_info)
        if missing_head == head_keys:
            loading_info.missing_keys = set(loading_info.missing_keys) - head_keys
            logger.warning(
                f"Added a {self.config.semantic_decoder} class head for {self.config.num_labels} classes; it starts "
                "from SAM's decoder and is what training learns with the adapters."
            )

    @classmethod
    def _loadable_model_types(cls) -> tuple[str, ...]:
        return (*super()._loadable_model_types(), IcMoeSamConfig.model_type)

    @classmethod
    def _config_from_checkpoint(cls, name_or_path, config_dict: dict, icmoe_config, kwargs: dict):
        """Besides SAM and semantic checkpoints: a prompted IC-MoE checkpoint, whose experts (and trained decoder)
        the semantic model keeps; its adapter configuration is the checkpoint's."""
        if config_dict.get("model_type") != IcMoeSamConfig.model_type:
            return super()._config_from_checkpoint(name_or_path, config_dict, icmoe_config, kwargs)
        if icmoe_config is not None:
            raise ValueError(
                f"{name_or_path} is an IC-MoE checkpoint; its experts are kept with their own configuration, so "
                "`icmoe_config` cannot be given."
            )
        prompted = IcMoeSamConfig.from_dict(config_dict)
        return cls.config_class.from_sam_config(
            prompted, icmoe_config=_as_adapter_config(prompted.icmoe_config), **cls._pop_config_kwargs(kwargs)
        )

    @classmethod
    def _pop_config_kwargs(cls, kwargs: dict) -> dict:
        return {key: kwargs.pop(key) for key in SEMANTIC_CONFIG_KWARGS if key in kwargs}

    # -------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_router_probs: bool | None = None,
        **kwargs,
    ) -> IcMoeSemanticSegmenterOutput | tuple:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, 3, height, width)`):
            Images as `SamProcessor` prepares them (resized to the longest side, normalised, padded).
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Class ids (0 the background) in the frame of `pixel_values`, at any resolution of its aspect ratio.
            When given, the output carries `loss` and `loss_terms`.
        output_router_probs (`bool`, *optional*):
            Whether to return every IC-MoE layer's votes and routing.
        """
        return_dict = kwargs.pop("return_dict", None)
        if return_dict is None:
            return_dict = self.config.return_dict
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"`pixel_values` must have shape (batch_size, channels, height, width), got {shape}.")
        if labels is not None:
            labels = self._check_class_labels(labels, pixel_values)

        routings: list[IcMoeRouting] = []
        with self._record_routing(routings, enabled=labels is not None or bool(output_router_probs)):
            image_embeddings = self.vision_encoder(pixel_values, **kwargs, return_dict=True).last_hidden_state
        batch, _, height, width = image_embeddings.shape
        positional = self.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)  # (B, C, h, w)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)
        logits = self.semantic_head(self.mask_decoder, image_embeddings, positional, no_mask)  # (B, L, 4h, 4w)

        loss, loss_terms = None, None
        if labels is not None:
            loss, loss_terms = self._semantic_loss(logits, image_embeddings, routings, labels)
        output = IcMoeSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            loss_terms=loss_terms,
            router_probs=tuple(r.votes for r in routings) if output_router_probs else None,
            routing=tuple(routings) if output_router_probs else None,
        )
        return output if return_dict else output.to_tuple()

    def objective_weights(self) -> dict[str, float]:
        aux = self.config.icmoe_config.loss_weights
        return {"ce": self.config.ce_loss_coef, "dice": self.config.dice_loss_coef,
                **{name: aux[name] for name in AUXILIARY_TERMS}}

    def _check_class_labels(self, labels: torch.Tensor, pixel_values: torch.Tensor) -> torch.LongTensor:
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}.")
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3 or 0 in labels.shape:
            raise ValueError(f"`labels` must be class-id maps of shape (batch_size, height, width), got "
                             f"{tuple(labels.shape)}.")
        if labels.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"`labels` has batch size {labels.shape[0]} but the images have {pixel_values.shape[0]}.")
        check_label_frame(labels, pixel_values, "pixel_values")
        return check_class_labels(labels, self.config.num_labels)

    def _semantic_loss(self, logits, image_embeddings, routings, labels) -> tuple[torch.Tensor, dict]:
        # The router's labels are foreground against background: the experts' pixel heads vote on "is this token an
        # object", whichever class it is.
        foreground = (labels > 0).float()  # (B, H, W)
        projected, predicted = None, None
        if self.icmoe_projection is not None:
            with torch.no_grad():  # P(any class), (B, h, w)
                predicted = resize_masks(1.0 - logits.float().softmax(dim=1)[:, 0], tuple(image_embeddings.shape[-2:]))
            projected = self.icmoe_projection(image_embeddings)
        return icmoe_objective(
            semantic_losses(logits, labels),
            self.objective_weights(),
            routings=routings,
            foreground=foreground,
            adapter_config=self.config.icmoe_config,
            projected_embeddings=projected,
            predicted_foreground=predicted,
        )


IcMoeSamForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__all__ = [
    "IcMoeMaskTokenHead",
    "IcMoeQueryHead",
    "IcMoeSamForSemanticSegmentation",
    "IcMoeSemanticSegmenterOutput",
]
