"""IC-MoE SAM: the Segment Anything Model with IC-MoE adapters in its image encoder.

IC-MoE ("Intelligent Communication Mixture-of-Experts Boosted-Medical Image Segmentation Foundation Model",
Zhang et al., arXiv 2510.17684) fine-tunes SAM for medical images without touching its pretrained weights.
This file holds `IcMoeSamModel`, a `SamModel` subclass that adds an IC-MoE layer to the chosen ViT blocks (beside
their attention's qkv projection or their MLP; `placement.py`) and a contrastive projection head, and computes the
IC-MoE training objective when `labels` are given. Every SAM parameter keeps its name, so `SamModel`
checkpoints load into it and its SAM weights load back into `SamModel`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.nn import functional as F
from transformers import SamConfig, SamModel
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.models.sam.modeling_sam import SamImageSegmentationOutput
from transformers.utils import logging

from .configuration_icmoe_sam import IcMoeAdapterConfig, IcMoeSamConfig, _as_adapter_config
from .imaging import check_boxes
from .layer import IcMoeLayer, IcMoeRouting
from .placement import IcMoeAttentionQkv, IcMoeMLPBlock
from .losses import (
    AUXILIARY_TERMS,
    binarize_labels,
    icmoe_objective,
    resize_masks,
    segmentation_losses,
    segmentation_targets,
)

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
LOSS_TERMS = ("dice", "bce", "iou", *AUXILIARY_TERMS)

logger = logging.get_logger(__name__)


@dataclass
class IcMoeSamOutput(SamImageSegmentationOutput):
    r"""
    Output of [`IcMoeSamModel`]: SAM's segmentation output plus the IC-MoE loss and routing.

    iou_scores (`torch.Tensor` of shape `(batch_size, point_batch_size, num_masks)`):
        Predicted IoU of each mask.
    pred_masks (`torch.Tensor` of shape `(batch_size, point_batch_size, num_masks, 256, 256)`):
        Low-resolution mask logits; `SamProcessor.post_process_masks` brings them to the original image size.
    loss (`torch.Tensor` of shape `()`, *optional*, returned when `labels` are given):
        The total IC-MoE objective.
    loss_terms (`dict[str, torch.Tensor]`, *optional*, returned when `labels` are given):
        Each term, detached: `dice`, `bce`, `iou`, `load_balance`, `router_z`, `vote`, `pixel`, `contrastive`.
    router_probs (`tuple[torch.Tensor]`, *optional*, returned when `output_router_probs=True`):
        One tensor of shape `(batch_size, grid_height, grid_width, num_routed_experts)` per IC-MoE layer: the fused
        top-k votes of each token over the routed experts (zero outside its top-k, summing to 1): the weights the
        mixture applies, not the router's softmax over all experts (that is `routing[i].router_logits`). The name
        follows the `output_router_probs` flag of transformers' mixture-of-experts models.
    routing (`tuple[IcMoeRouting]`, *optional*, returned when `output_router_probs=True`):
        Everything each IC-MoE layer's router computed: router logits, votes, top-k indices, pixel logits.
    """

    loss: torch.Tensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    router_probs: tuple[torch.Tensor, ...] | None = None
    routing: tuple[IcMoeRouting, ...] | None = None


class IcMoeProjectionHead(nn.Module):
    """Training-only 2-layer projection of image embeddings `(B, C, h, w)` to L2-normalised `(B, D, h, w)`."""

    def __init__(self, *, hidden_size: int, projection_dim: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.dense = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.dense_bias = nn.Parameter(torch.empty(hidden_size))
        self.projection = nn.Parameter(torch.empty(projection_dim, hidden_size))
        self.projection_bias = nn.Parameter(torch.empty(projection_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in (self.dense, self.dense_bias, self.projection, self.projection_bias):
            init.uniform_(weight, -bound, bound)

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        hidden = torch.einsum("bchw,dc->bdhw", image_embeddings, self.dense) + self.dense_bias[:, None, None]
        hidden = torch.einsum("bchw,dc->bdhw", F.gelu(hidden), self.projection) + self.projection_bias[:, None, None]
        return F.normalize(hidden, dim=1)  # (B, D, h, w)


def _record_into(records: list[IcMoeRouting]):
    """A forward hook that stores a layer's routing. It computes nothing: under activation checkpointing the layer
    is re-run in the backward pass without this hook, and both runs must do the same work."""

    def hook(_module: IcMoeLayer, _inputs, output) -> None:
        records.append(output[1])

    return hook


def _unreadable_weight_files(name_or_path) -> list[str]:
    """The safetensors files of a local checkpoint folder whose header cannot be read (none for a Hub id)."""
    folder, unreadable = Path(name_or_path), []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except SafetensorError:
            unreadable.append(str(path))
    return unreadable


def check_label_frame(labels: torch.Tensor, images: torch.Tensor, what: str) -> None:
    """Raises unless `labels (..., H, W)` have the aspect ratio of `images (..., h, w)`. Labels are resized to the
    model's grids, never cropped: another aspect ratio would be stretched silently."""
    frame = tuple(images.shape[-2:])
    label_aspect, image_aspect = labels.shape[-1] / labels.shape[-2], frame[1] / frame[0]
    if abs(label_aspect / image_aspect - 1.0) > 0.02:
        raise ValueError(
            f"`labels` of size {tuple(labels.shape[-2:])} do not have the aspect ratio of the {what} {frame}: they must "
            "be in the same frame (resized and padded as the image is, e.g. by `SamProcessor(..., "
            "segmentation_maps=...)`)."
        )


class IcMoeSamModel(SamModel):
    """SAM with IC-MoE adapters. See the module docstring and [`IcMoeSamConfig`]."""

    config_class = IcMoeSamConfig
    config: IcMoeSamConfig

    def __init__(self, config: IcMoeSamConfig):
        # Checked by model type, not class: remote code may load the config class from another module object.
        expected = type(self).config_class
        if getattr(config, "model_type", None) != expected.model_type:
            raise ValueError(
                f"{type(self).__name__} needs an {expected.__name__}, got {type(config).__name__}; use "
                f"`{expected.__name__}.from_sam_config(sam_config, icmoe_config=...)`"
                + (" or `get_icmoe_model`." if expected is IcMoeSamConfig else ".")
            )
        super().__init__(config)
        adapter_config = config.icmoe_config
        vision_config = config.vision_config
        for index in adapter_config.resolve_target_layers(vision_config.num_hidden_layers):
            block = self.vision_encoder.layers[index]
            if adapter_config.expert_placement == "attention":
                block.attn.qkv = IcMoeAttentionQkv(vision_config, adapter_config, block.window_size)
            else:
                block.mlp = IcMoeMLPBlock(vision_config, adapter_config)
        self.icmoe_projection = (
            IcMoeProjectionHead(hidden_size=vision_config.output_channels, projection_dim=adapter_config.projection_dim)
            if adapter_config.contrastive_loss_coef > 0
            else None
        )
        self._add_task_modules(config)
        self.post_init()
        self.mark_trainable()

    def _add_task_modules(self, config) -> None:
        """Where a task model adds its own modules, before the weights are initialised (none for the prompted model)."""

    def objective_weights(self) -> dict[str, float]:
        """The weight of each term of this model's training objective (`loss_terms` names)."""
        return dict(self.config.icmoe_config.loss_weights)

    def reset_task_modules(self) -> None:
        """Re-initialises the task modules that start from SAM's own weights, once those are in place."""

    # ----------------------------------------------------------------------------------------------- adapters
    def adapter_modules(self) -> list[tuple[str, nn.Module]]:
        """The IC-MoE modules (layers and projection head), with their names in the model."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, (IcMoeLayer, IcMoeProjectionHead))]

    def trainable_modules(self) -> list[tuple[str, nn.Module]]:
        """What training changes: the adapters, and the mask decoder when `train_mask_decoder` is set."""
        modules = self.adapter_modules()
        if self.config.icmoe_config.train_mask_decoder:
            modules.append(("mask_decoder", self.mask_decoder))
        return modules

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """A plain SAM checkpoint has none of the adapter tensors, by design: one line says so instead of a loading
        report listing every one of them as missing. Any other missing tensor is still reported."""
        super()._adjust_missing_and_unexpected_keys(loading_info)
        prefixes = tuple(f"{name}." for name, _ in self.adapter_modules())
        adapter_keys = {key for key in self.state_dict() if key.startswith(prefixes)}
        if adapter_keys and adapter_keys <= set(loading_info.missing_keys):
            loading_info.missing_keys = set(loading_info.missing_keys) - adapter_keys
            logger.warning(
                f"Added {len(adapter_keys)} new IC-MoE adapter tensors to the SAM checkpoint; they start so that the "
                "model computes what the base SAM computes, and are what training learns."
            )

    def mark_trainable(self) -> None:
        """Freezes every SAM weight except those `trainable_modules` names."""
        self.requires_grad_(False)
        for _, module in self.trainable_modules():
            module.requires_grad_(True)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The state of `trainable_modules`, keyed by full parameter name: what an adapter-only checkpoint holds."""
        return {
            f"{prefix}.{key}": tensor
            for prefix, module in self.trainable_modules()
            for key, tensor in module.state_dict().items()
        }

    def initialize_weights(self):
        super().initialize_weights()
        # Adapters live inside the vision encoder, whose own `_init_weights` would use SAM's 1e-10 range: initialise
        # them with their own scheme. Tensors loaded from a checkpoint carry a flag that makes these calls skip them.
        for _, module in self.adapter_modules():
            module.reset_parameters()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        """As in `PreTrainedModel`, non-reentrant only: the router and pixel-vote losses read tensors from inside
        the blocks, which reentrant checkpointing computes without autograd, so they would get no gradient."""
        if (activation_checkpointing_kwargs or {}).get("use_reentrant", False):
            raise ValueError(
                "IcMoeSamModel supports only non-reentrant activation checkpointing (use_reentrant=False, the "
                "default): with reentrant checkpointing the IC-MoE router losses would not reach the router."
            )
        super().activation_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)

    # -------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, icmoe_config=None, **kwargs):
        """Loads an IC-MoE checkpoint, or wraps a plain `SamModel` checkpoint with fresh IC-MoE adapters.

        Args:
            pretrained_model_name_or_path: Hub id or local folder of an IC-MoE or a `SamModel` checkpoint.
            icmoe_config (`IcMoeAdapterConfig` or `dict`, *optional*): adapter configuration for wrapping a `SamModel`
                checkpoint (defaults to `IcMoeAdapterConfig()`); not allowed with an IC-MoE checkpoint.
            kwargs: as for `PreTrainedModel.from_pretrained`.
        """
        if kwargs.get("config") is None:
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            config = cls._config_from_checkpoint(pretrained_model_name_or_path, config_dict, icmoe_config, kwargs)
            if config is not None:
                kwargs["config"] = config
        elif icmoe_config is not None:
            raise ValueError("Pass either `config` or `icmoe_config`, not both.")
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except SafetensorError as error:  # its message names no file
            files = _unreadable_weight_files(pretrained_model_name_or_path)
            files = files or [f"A weights file of {pretrained_model_name_or_path}"]
            raise OSError(
                f"{', '.join(files)}: truncated or corrupt safetensors ({error}). Save or download the checkpoint again."
            ) from error
        # Loading replaces parameters, which drops their `requires_grad`: freeze again.
        (loaded[0] if isinstance(loaded, tuple) else loaded).mark_trainable()
        return loaded

    @classmethod
    def _config_from_checkpoint(cls, name_or_path, config_dict: dict, icmoe_config, kwargs: dict):
        """The config to load `name_or_path` with: None for a checkpoint of this class's own type, a new one built
        around a plain SAM checkpoint's (with `icmoe_config`, or the defaults)."""
        model_type = config_dict.get("model_type")
        if model_type == cls.config_class.model_type:
            if icmoe_config is not None:
                raise ValueError(
                    f"{name_or_path} is already an IC-MoE checkpoint; load it without `icmoe_config` (its adapter "
                    "configuration is stored in it)."
                )
            return None
        if model_type == SamConfig.model_type:
            adapter_config = dataclasses.replace(_as_adapter_config(icmoe_config))
            if adapter_config.base_model_name_or_path is None:
                adapter_config.base_model_name_or_path = str(name_or_path)
            return cls.config_class.from_sam_config(
                SamConfig.from_dict(config_dict), icmoe_config=adapter_config, **cls._pop_config_kwargs(kwargs)
            )
        raise ValueError(
            f"{name_or_path} holds a `{model_type}` model; {cls.__name__} loads "
            f"{' or '.join(f'`{t}`' for t in cls._loadable_model_types())} checkpoints."
        )

    @classmethod
    def _loadable_model_types(cls) -> tuple[str, ...]:
        return (SamConfig.model_type, cls.config_class.model_type)

    @classmethod
    def _pop_config_kwargs(cls, kwargs: dict) -> dict:
        """The `from_pretrained` keyword arguments that are fields of this class's own config (none here)."""
        return {}

    # -------------------------------------------------------------------------------------------- forward
    @contextlib.contextmanager
    def _record_routing(self, records: list[IcMoeRouting], enabled: bool):
        """Collects each IC-MoE layer's routing during one forward pass; the hooks go away when it ends."""
        handles = []
        if enabled:
            for _, module in self.adapter_modules():
                if isinstance(module, IcMoeLayer):
                    handles.append(module.register_forward_hook(_record_into(records)))
        try:
            yield records
        finally:
            for handle in handles:
                handle.remove()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.LongTensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.LongTensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        multimask_output: bool = True,
        attention_similarity: torch.Tensor | None = None,
        target_embedding: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_router_probs: bool | None = None,
        **kwargs,
    ) -> IcMoeSamOutput | tuple:
        r"""
        Everything [`SamModel.forward`] takes, plus:

        labels (`torch.Tensor` of shape `(batch_size, height, width)` or `(batch_size, point_batch_size, height,
            width)`, *optional*):
            Binary ground-truth masks ({0, 1}, {0, 255} or bool) in the frame of `pixel_values` (the resized and
            padded image, as `SamProcessor(..., segmentation_maps=...)` gives them), at any resolution: they are
            resized inside to the low-resolution mask size. One mask per prompt; `(batch_size, height, width)` when
            each image has one prompt. When given, the output carries `loss` and `loss_terms`.
        output_router_probs (`bool`, *optional*):
            Whether to return every IC-MoE layer's fused votes as `router_probs`.
        """
        return_dict = kwargs.pop("return_dict", None)
        if return_dict is None:
            return_dict = self.config.return_dict
        if pixel_values is not None and pixel_values.ndim != 4:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        if pixel_values is not None and image_embeddings is not None:
            raise ValueError("Only one of `pixel_values` and `image_embeddings` can be provided.")
        if input_boxes is not None:
            size = self.config.vision_config.image_size
            self._check_boxes(input_boxes, tuple(pixel_values.shape[-2:]) if pixel_values is not None else (size, size))
        if labels is not None:
            labels = self._check_labels(labels, pixel_values, image_embeddings, input_points, input_boxes)

        routings: list[IcMoeRouting] = []
        vision_outputs = None
        if pixel_values is not None:
            with self._record_routing(routings, enabled=labels is not None or bool(output_router_probs)):
                vision_outputs = self.vision_encoder(pixel_values, **kwargs, return_dict=True)
            image_embeddings = vision_outputs.last_hidden_state

        sam_outputs = super().forward(
            input_points=input_points,
            input_labels=input_labels,
            input_boxes=input_boxes,
            input_masks=input_masks,
            image_embeddings=image_embeddings,
            multimask_output=multimask_output,
            attention_similarity=attention_similarity,
            target_embedding=target_embedding,
            **kwargs,
            return_dict=True,  # the fields are read below; `return_dict` of this call decides what is returned
        )
        loss, loss_terms = None, None
        if labels is not None:
            loss, loss_terms = self._loss(sam_outputs, image_embeddings, routings, labels)

        output = IcMoeSamOutput(
            iou_scores=sam_outputs.iou_scores,
            pred_masks=sam_outputs.pred_masks,
            vision_hidden_states=vision_outputs.hidden_states if vision_outputs is not None else None,
            vision_attentions=vision_outputs.attentions if vision_outputs is not None else None,
            mask_decoder_attentions=sam_outputs.mask_decoder_attentions,
            loss=loss,
            loss_terms=loss_terms,
            router_probs=tuple(r.votes for r in routings) if output_router_probs else None,
            routing=tuple(routings) if output_router_probs else None,
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _check_boxes(boxes: torch.Tensor, frame: tuple[int, int]) -> None:
        """Boxes `(B, P, 4)` as `x0, y0, x1, y1` in the input frame, by the one box rule of `imaging.check_boxes`
        (a box of zero width or height passes: the inclusive box of a one-pixel-wide object)."""
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise ValueError(
                f"`input_boxes` must have shape (batch_size, num_boxes, 4) as x0, y0, x1, y1, got {tuple(boxes.shape)}."
            )
        if torch.compiler.is_compiling():
            return  # value checks read the tensor on the host: under torch.compile they would break the graph
        check_boxes(boxes, frame, what="`input_boxes`", frame_name="input frame",
                    hint=" Boxes are in the coordinates of the resized image, as `SamProcessor` rescales them.")

    @staticmethod
    def _check_labels(labels, pixel_values, image_embeddings, input_points, input_boxes) -> torch.Tensor:
        """Validates `labels` and returns them as float {0, 1} of shape (B, P, H, W)."""
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}.")
        images = pixel_values if pixel_values is not None else image_embeddings
        batch_size = images.shape[0] if images is not None else None
        if input_points is not None:
            num_prompts = input_points.shape[1]
        elif input_boxes is not None:
            num_prompts = input_boxes.shape[1]
        else:
            num_prompts = 1
        if labels.ndim == 3:
            labels = labels.unsqueeze(1)
        if labels.ndim != 4 or labels.shape[-1] == 0 or labels.shape[-2] == 0:
            raise ValueError(
                "`labels` must have shape (batch_size, height, width) or (batch_size, point_batch_size, height, "
                f"width), got {tuple(labels.shape)}."
            )
        if batch_size is not None and labels.shape[0] != batch_size:
            raise ValueError(f"`labels` has batch size {labels.shape[0]} but the images have {batch_size}.")
        if images is not None:
            check_label_frame(labels, images, "pixel_values" if pixel_values is not None else "image_embeddings")
        if labels.shape[1] != num_prompts:
            raise ValueError(
                f"`labels` has {labels.shape[1]} mask(s) per image but the prompts ask for {num_prompts}; pass one "
                "mask per prompt, shape (batch_size, point_batch_size, height, width)."
            )
        return binarize_labels(labels)

    def _loss(
        self,
        outputs: SamImageSegmentationOutput,
        image_embeddings: torch.Tensor,
        routings: list[IcMoeRouting],
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # (B, P, h, w); `forward` checked and binarized the labels once already
        targets = segmentation_targets(labels, tuple(outputs.pred_masks.shape[-2:]), binarized=True)
        projected, predicted = None, None
        if self.icmoe_projection is not None:
            with torch.no_grad():
                best = outputs.iou_scores.argmax(dim=-1)[..., None, None, None]  # (B, P, 1, 1, 1)
                best = best.expand(-1, -1, 1, *outputs.pred_masks.shape[-2:])
                predicted = outputs.pred_masks.gather(2, best).squeeze(2).sigmoid().amax(dim=1)  # (B, h, w)
                predicted = resize_masks(predicted, tuple(image_embeddings.shape[-2:]))
            projected = self.icmoe_projection(image_embeddings)
        return icmoe_objective(
            segmentation_losses(outputs.pred_masks, outputs.iou_scores, targets),
            self.objective_weights(),
            routings=routings,
            foreground=labels.amax(dim=1),  # (B, H, W): any prompt's target
            adapter_config=self.config.icmoe_config,
            projected_embeddings=projected,
            predicted_foreground=predicted,
        )


def get_icmoe_model(sam_model: SamModel, adapter_config: IcMoeAdapterConfig | dict | None = None) -> IcMoeSamModel:
    """Wraps a `SamModel` already in memory with fresh IC-MoE adapters (the `peft.get_peft_model` analogue).

    Returns a new `IcMoeSamModel` holding a copy of the SAM weights, on the same device and dtype; `sam_model`
    itself is left unchanged.
    """
    if isinstance(sam_model, IcMoeSamModel):
        raise ValueError("This model already has IC-MoE adapters; pass a plain SamModel.")
    return wrap_sam_model(sam_model, adapter_config, IcMoeSamModel)


def wrap_sam_model(sam_model: SamModel, adapter_config, model_class: type[IcMoeSamModel], **config_kwargs):
    """A new `model_class` (an IC-MoE model class) around a copy of `sam_model`'s weights, with fresh adapters and
    task modules; `config_kwargs` are fields of `model_class`'s config (a semantic model's classes)."""
    if not isinstance(sam_model, SamModel):
        raise ValueError(f"{model_class.__name__} needs a transformers SamModel to wrap, got {type(sam_model).__name__}.")
    adapter_config = dataclasses.replace(_as_adapter_config(adapter_config))
    if adapter_config.base_model_name_or_path is None and sam_model.name_or_path:
        adapter_config.base_model_name_or_path = sam_model.name_or_path
    config = model_class.config_class.from_sam_config(sam_model.config, icmoe_config=adapter_config, **config_kwargs)
    config._attn_implementation = sam_model.config._attn_implementation
    reference = next(sam_model.parameters())
    model = model_class(config).to(device=reference.device, dtype=reference.dtype)
    sam_state = sam_model.state_dict()
    result = model.load_state_dict(sam_state, strict=False)
    new_keys = set(model.state_dict()) - set(sam_state)
    if result.unexpected_keys or set(result.missing_keys) != new_keys:
        raise ValueError(
            f"The SAM weights do not fit {model_class.__name__}: unexpected {sorted(result.unexpected_keys)[:5]}, "
            f"missing {sorted(set(result.missing_keys) - new_keys)[:5]}."
        )
    model.reset_task_modules()  # task modules that start from SAM's weights start from these
    model.train(sam_model.training)
    return model


IcMoeSamModel.register_for_auto_class("AutoModel")

__all__ = ["IcMoeSamModel", "IcMoeSamOutput", "IcMoeMLPBlock", "IcMoeAttentionQkv", "IcMoeProjectionHead", "get_icmoe_model"]
