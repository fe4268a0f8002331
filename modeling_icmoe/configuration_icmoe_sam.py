"""Configuration of IC-MoE SAM.

IC-MoE ("Intelligent Communication Mixture-of-Experts", Zhang et al., arXiv 2510.17684) adds a mixture of
shared, basic, semantic and adaptive low-rank experts beside each chosen ViT block of SAM's image encoder (by default
beside the attention's fused qkv projection). This file holds the adapter configuration (`IcMoeAdapterConfig`, a plain
dataclass in the style of PEFT configs) and the model configurations (`IcMoeSamConfig`, a `SamConfig` that carries an
`IcMoeAdapterConfig`, and `IcMoeSamSemanticConfig`, its prompt-free variant).

Each default below says in one clause why it is the default; docs/METHOD.md ("The current defaults, and the
measurements behind them") has the measurements with their results files, docs/HISTORY.md the order they were taken in.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

from transformers import SamConfig


EXPERT_PLACEMENTS = ("mlp", "attention")
SEMANTIC_DECODERS = ("mask_tokens", "queries")
SEMANTIC_FIELDS = ("semantic_decoder", "num_query_tokens", "ce_loss_coef", "dice_loss_coef", "label_values")
EXPERT_ACTIVATIONS = ("gelu", "identity", "gelu_routed")
INTEGER_FIELDS = (
    "num_shared_experts", "num_basic_experts", "num_semantic_experts", "num_adaptive_experts", "num_experts_per_tok",
    "expert_rank", "contrastive_samples_per_class", "projection_dim",
)
REAL_FIELDS = (
    "expert_output_scale", "routed_scaling_factor", "router_jitter_noise", "vote_temperature", "pixel_vote_weight",
    "label_consistency_weight", "router_aux_loss_coef", "router_z_loss_coef", "vote_loss_coef", "pixel_loss_coef",
    "contrastive_loss_coef", "contrastive_temperature",
)


def _integer(name: str, value) -> int:
    """`value` as an int when it is one (or an integral float, as JSON may write it); a clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise ValueError(f"`{name}` must be an integer, got {value!r}.")
    return int(value)


@dataclass
class IcMoeAdapterConfig:
    """Configuration of the IC-MoE adapters added to a SAM image encoder.

    The measurements behind the defaults are in docs/METHOD.md; test-split numbers there come from a development split.

    Args:
        num_shared_experts (`int`, *optional*, defaults to 1):
            Basic experts that every token uses, outside the routing (always on). Removing the shared expert lowered
            ultrasound test Dice beyond the chance of seeds and test objects.
        num_basic_experts (`int`, *optional*, defaults to 1):
            Routed token-wise bottleneck experts (`down -> GELU -> up`). Removing the basic experts (routed and
            shared) lowered test Dice on two of three tasks beyond chance, more than any other removal.
        num_semantic_experts (`int`, *optional*, defaults to 2):
            Bottleneck experts with a depthwise 3x3 convolution on the token grid (regional context). Removing them
            lowered two tasks by more than the seed spread, none beyond the chance of the test objects.
        semantic_dilations (`list[int]`, *optional*):
            One dilation per semantic expert. Defaults to `1, 2, ..., num_semantic_experts`.
        num_adaptive_experts (`int`, *optional*, defaults to 2):
            Bottleneck experts whose channels are modulated per image from the image's pooled features. Removing
            them lowered MR test Dice beyond chance.
        num_experts_per_tok (`int`, *optional*, defaults to 2):
            Top-k: how many routed experts each token is sent to. Top-1 lowered ultrasound test Dice beyond chance;
            dense routing (every routed expert) lowered no task.
        expert_rank (`int`, *optional*, defaults to 8):
            Bottleneck width of every expert. Rank 8 beside qkv keeps the parameter budget of the matched baselines;
            rank 16 led by 0.002 on validation, within the seed spread, at twice the parameters.
        expert_output_scale (`float`, *optional*, defaults to 2.0):
            Scale of the mixture output added to the block (`x + MLP(h) + scale * MoE(h)`). Scale 1 scored lower on
            validation (0.756 against 0.759).
        routed_scaling_factor (`float`, *optional*, defaults to 1.0):
            Multiplies the routed experts' votes (which sum to 1 over a token's top-k) before they weight the
            experts; shared experts keep weight 1. With `k` routed experts per token, `k` gives each chosen expert
            the weight of a shared one on average. 1: a larger factor with linear experts (the preset
            `configuration/icmoe/gated_linear.json`) closes the gap to LoRA on the nuclei but loses MR.
        target_layers (`list[int]`, *optional*):
            Indices of the vision blocks that get an IC-MoE layer. `None` means every block; `[]` none, which leaves
            SAM's image encoder as it is (the prompt-free models of the other fine-tuning methods are built so).
        expert_placement (`str`, *optional*, defaults to `"attention"`):
            Where the mixture joins each chosen block. `"mlp"`: on the MLP's input, added to the MLP's output
            (`x + MLP(h) + scale * MoE(h)`, `h = LN2(x)`). `"attention"`: on the attention's input, added to the
            fused qkv projection (`qkv(h) + scale * MoE(h)`, `h = LN1(x)`), so the experts change what tokens attend
            to; the mixture always sees the whole token grid, also in windowed-attention blocks. `"attention"`
            scored higher on validation than `"mlp"` at the same parameter budget.
        expert_activation (`str`, *optional*, defaults to `"gelu"`):
            The experts' bottleneck activation: `"gelu"`, or `"identity"` for linear experts (a basic expert is then a
            LoRA-like low-rank update of the projection it joins; the adaptive experts' modulation stays), or
            `"gelu_routed"` for linear shared experts and GELU on the routed ones. Linear experts scored lower on
            ultrasound validation.
        router_jitter_noise (`float`, *optional*, defaults to 0.01):
            Multiplicative jitter on the router input while training. Without it MR and ultrasound scored lower on
            validation (by 0.003 and 0.008).
        vote_temperature (`float`, *optional*, defaults to 1.0):
            Temperature of the vote softmax.
        pixel_vote_weight (`float`, *optional*, defaults to 0.0):
            Weight of each expert's pixel-probability confidence, `log max(p, 1 - p)`, in its vote, at training and
            inference alike. `0` (the default) routes by the router logits alone: without the votes mean validation
            Dice over four seeds was 0.787 against 0.785. 1.0 is the weight the votes were measured with.
        label_consistency_weight (`float`, *optional*, defaults to 1.0):
            Weight of the label-consistency term in the label-guided target votes.
        router_aux_loss_coef (`float`, *optional*, defaults to 0.1):
            Weight of the load-balancing loss. Its removal lowers no task around the current default; around an
            earlier default it let one seed's router starve the semantic experts.
        router_z_loss_coef (`float`, *optional*, defaults to 0.0):
            Weight of the router z-loss.
        vote_loss_coef (`float`, *optional*, defaults to 0.0):
            Weight of the vote loss (the router learns to predict the label-consistent vote); 0 with the pixel votes
            off (the default, see `pixel_vote_weight`), 0.1 as measured with them.
        pixel_loss_coef (`float`, *optional*, defaults to 0.1):
            Weight of the pixel-probability loss (BCE of every expert's pixel vote against the label). Removing it
            lowered MR test Dice by 0.006.
        contrastive_loss_coef (`float`, *optional*, defaults to 0.0):
            Weight of the semantic-guided contrastive loss. `0` (the default) removes the projection head: without
            the loss mean validation Dice over four seeds was 0.764 against 0.760. 0.01 is the weight it was measured
            with.
        contrastive_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the contrastive loss.
        contrastive_samples_per_class (`int`, *optional*, defaults to 64):
            Anchors sampled per class and image for the contrastive loss.
        projection_dim (`int`, *optional*, defaults to 128):
            Output size of the contrastive projection head.
        train_mask_decoder (`bool`, *optional*, defaults to `True`):
            Whether the mask decoder is trained together with the adapters.
        base_model_name_or_path (`str`, *optional*):
            The SAM checkpoint the adapters were added to; written into adapter-only checkpoints.
    """

    num_shared_experts: int = field(
        default=1, metadata={"help": "Number of always-on basic experts that every token uses, outside the routing."}
    )
    num_basic_experts: int = field(default=1, metadata={"help": "Number of routed token-wise bottleneck experts."})
    num_semantic_experts: int = field(
        default=2, metadata={"help": "Number of experts with a dilated depthwise 3x3 conv on the token grid."}
    )
    semantic_dilations: list[int] | None = field(
        default=None, metadata={"help": "One dilation per semantic expert; defaults to 1, 2, ..., n."}
    )
    num_adaptive_experts: int = field(
        default=2, metadata={"help": "Number of experts with per-image channel modulation."}
    )
    num_experts_per_tok: int = field(default=2, metadata={"help": "Top-k routed experts per token."})
    expert_rank: int = field(default=8, metadata={"help": "Bottleneck width of every expert."})
    expert_output_scale: float = field(default=2.0, metadata={"help": "Scale of the mixture output."})
    routed_scaling_factor: float = field(
        default=1.0, metadata={"help": "Multiplier of the routed experts' votes (which sum to 1 per token)."}
    )
    target_layers: list[int] | None = field(
        default=None, metadata={"help": "Vision block indices that get an IC-MoE layer; None = all."}
    )
    expert_placement: str = field(
        default="attention",
        metadata={
            "help": "Where the mixture joins each block: `mlp` (beside the MLP, added to its output) or `attention` "
            "(beside the fused qkv projection, added to queries, keys and values)."
        },
    )
    expert_activation: str = field(
        default="gelu",
        metadata={
            "help": "The experts' bottleneck activation: `gelu`, `identity` (linear experts) or `gelu_routed` "
            "(linear shared experts, GELU on the routed ones)."
        },
    )
    router_jitter_noise: float = field(
        default=0.01, metadata={"help": "Multiplicative jitter on the router input while training, in [0, 1)."}
    )
    vote_temperature: float = field(default=1.0, metadata={"help": "Temperature of the vote softmax (> 0)."})
    pixel_vote_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the experts' pixel-probability confidence in the votes (>= 0); 0 = router only (1.0 as "
            "measured)."
        },
    )
    label_consistency_weight: float = field(
        default=1.0, metadata={"help": "Weight of label consistency in the target votes (>= 0)."}
    )
    router_aux_loss_coef: float = field(default=0.1, metadata={"help": "Weight of the load-balancing loss."})
    router_z_loss_coef: float = field(default=0.0, metadata={"help": "Weight of the router z-loss."})
    vote_loss_coef: float = field(default=0.0, metadata={"help": "Weight of the vote loss (0.1 with pixel votes)."})
    pixel_loss_coef: float = field(default=0.1, metadata={"help": "Weight of the experts' pixel-probability loss."})
    contrastive_loss_coef: float = field(
        default=0.0,
        metadata={"help": "Weight of the semantic-guided contrastive loss (0.01 as measured); 0 drops the head."},
    )
    contrastive_temperature: float = field(default=0.1, metadata={"help": "Contrastive temperature (> 0)."})
    contrastive_samples_per_class: int = field(
        default=64, metadata={"help": "Contrastive anchors sampled per class and image."}
    )
    projection_dim: int = field(default=128, metadata={"help": "Output size of the contrastive projection head."})
    train_mask_decoder: bool = field(default=True, metadata={"help": "Train the mask decoder too."})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The SAM checkpoint the adapters belong to."}
    )

    def __post_init__(self):
        self._check_types()
        counts = {
            "num_shared_experts": self.num_shared_experts,
            "num_basic_experts": self.num_basic_experts,
            "num_semantic_experts": self.num_semantic_experts,
            "num_adaptive_experts": self.num_adaptive_experts,
        }
        for name, value in counts.items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
        if self.num_routed_experts == 0:
            raise ValueError(
                "IC-MoE needs at least one routed expert: `num_basic_experts`, `num_semantic_experts` and "
                "`num_adaptive_experts` are all 0."
            )
        if not 1 <= self.num_experts_per_tok <= self.num_routed_experts:
            raise ValueError(
                f"`num_experts_per_tok` must be between 1 and the number of routed experts ({self.num_routed_experts}), "
                f"got {self.num_experts_per_tok}."
            )
        if self.expert_rank <= 0:
            raise ValueError(f"`expert_rank` must be a positive integer, got {self.expert_rank}.")
        if self.semantic_dilations is None:
            self.semantic_dilations = list(range(1, self.num_semantic_experts + 1))
        self.semantic_dilations = [int(d) for d in self.semantic_dilations]
        if len(self.semantic_dilations) != self.num_semantic_experts or any(d < 1 for d in self.semantic_dilations):
            raise ValueError(
                "`semantic_dilations` must hold one dilation >= 1 per semantic expert "
                f"({self.num_semantic_experts}), got {self.semantic_dilations}."
            )
        if self.target_layers is not None:
            layers = [int(i) for i in self.target_layers]
            if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
                raise ValueError(
                    f"`target_layers` must be None or a list of distinct block indices >= 0, "
                    f"got {self.target_layers}."
                )
            self.target_layers = sorted(layers)
        if self.expert_placement not in EXPERT_PLACEMENTS:
            raise ValueError(
                f"`expert_placement` must be one of {EXPERT_PLACEMENTS}, got {self.expert_placement!r}."
            )
        if self.expert_activation not in EXPERT_ACTIVATIONS:
            raise ValueError(
                f"`expert_activation` must be one of {EXPERT_ACTIVATIONS}, got {self.expert_activation!r}."
            )
        if not 0.0 <= self.router_jitter_noise < 1.0:
            raise ValueError(f"`router_jitter_noise` must be in [0, 1), got {self.router_jitter_noise}.")
        for name in ("vote_temperature", "contrastive_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")
        for name in (
            "pixel_vote_weight",
            "label_consistency_weight",
            "router_aux_loss_coef",
            "router_z_loss_coef",
            "vote_loss_coef",
            "pixel_loss_coef",
            "contrastive_loss_coef",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        for name in ("contrastive_samples_per_class", "projection_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")

    def _check_types(self) -> None:
        """Integers must be integral (an integral float from JSON becomes an int) and reals finite; the range checks
        of `__post_init__` then see clean values."""
        for name in INTEGER_FIELDS:
            setattr(self, name, _integer(name, getattr(self, name)))
        for name in ("semantic_dilations", "target_layers"):
            values = getattr(self, name)
            if values is not None:
                if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                    raise ValueError(f"`{name}` must be a list of integers, got {values!r}.")
                setattr(self, name, [_integer(name, value) for value in values])
        for name in REAL_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
            setattr(self, name, float(value))
        if self.expert_output_scale <= 0:
            raise ValueError(f"`expert_output_scale` must be > 0, got {self.expert_output_scale}.")
        if self.routed_scaling_factor <= 0:
            raise ValueError(f"`routed_scaling_factor` must be > 0, got {self.routed_scaling_factor}.")

    @property
    def num_routed_experts(self) -> int:
        return self.num_basic_experts + self.num_semantic_experts + self.num_adaptive_experts

    @property
    def num_experts(self) -> int:
        return self.num_shared_experts + self.num_routed_experts

    @property
    def loss_weights(self) -> dict[str, float]:
        """The weight of each term of the IC-MoE objective."""
        return {
            "dice": 1.0,
            "bce": 1.0,
            "iou": 1.0,
            "load_balance": self.router_aux_loss_coef,
            "router_z": self.router_z_loss_coef,
            "vote": self.vote_loss_coef,
            "pixel": self.pixel_loss_coef,
            "contrastive": self.contrastive_loss_coef,
        }

    def expert_kinds(self) -> list[str]:
        """The kind of each expert in the layers' order: shared, basic, semantic, adaptive."""
        counts = (
            ("shared", self.num_shared_experts),
            ("basic", self.num_basic_experts),
            ("semantic", self.num_semantic_experts),
            ("adaptive", self.num_adaptive_experts),
        )
        return [kind for kind, count in counts for _ in range(count)]

    def resolve_target_layers(self, num_hidden_layers: int) -> list[int]:
        """The vision block indices that get an IC-MoE layer, checked against the encoder's depth."""
        if self.target_layers is None:
            return list(range(num_hidden_layers))
        missing = [i for i in self.target_layers if i >= num_hidden_layers]
        if missing:
            raise ValueError(
                f"`target_layers` names blocks {missing} but the image encoder has {num_hidden_layers} blocks "
                f"(indices 0..{num_hidden_layers - 1})."
            )
        return list(self.target_layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, config_dict: dict) -> IcMoeAdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config_dict) - known)
        if unknown:
            raise ValueError(f"Unknown IC-MoE adapter config fields: {unknown}.")
        if "expert_placement" not in config_dict and "base_model_name_or_path" in config_dict:
            # Written by `to_dict` (which always writes `base_model_name_or_path`) before the placement was
            # configurable: its experts sit beside the MLP.
            config_dict = {**config_dict, "expert_placement": "mlp"}
        return cls(**config_dict)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> IcMoeAdapterConfig:
        with open(path, encoding="utf-8") as f:
            try:
                config_dict = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not a valid IC-MoE adapter config (JSON error: {err}).") from err
        return cls.from_dict(config_dict)


def _as_adapter_config(value) -> IcMoeAdapterConfig:
    if value is None:
        return IcMoeAdapterConfig()
    if isinstance(value, IcMoeAdapterConfig):
        return value
    if isinstance(value, dict):
        return IcMoeAdapterConfig.from_dict(value)
    # A class of the same name from another import of this file (for example remote code) converts by fields.
    if hasattr(value, "to_dict"):
        return IcMoeAdapterConfig.from_dict(value.to_dict())
    raise ValueError(f"`icmoe_config` must be an IcMoeAdapterConfig, a dict or None, got {type(value).__name__}.")


class IcMoeSamConfig(SamConfig):
    r"""
    Configuration of [`IcMoeSamModel`]: SAM's three sub-configurations plus the IC-MoE adapter configuration.

    Args:
        vision_config, prompt_encoder_config, mask_decoder_config:
            As in [`SamConfig`].
        icmoe_config (`IcMoeAdapterConfig` or `dict`, *optional*):
            The IC-MoE adapter configuration. Defaults to `IcMoeAdapterConfig()`.
    """

    model_type = "icmoe_sam"

    icmoe_config: dict | IcMoeAdapterConfig | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Re-assign so that `__setattr__` converts and checks it against the encoder.
        self.icmoe_config = self.icmoe_config
        if getattr(self, "auto_map", None) is None:
            self.auto_map = {
                "AutoConfig": "configuration_icmoe_sam.IcMoeSamConfig",
                "AutoModel": "modeling_icmoe_sam.IcMoeSamModel",
                "AutoModelForMaskGeneration": "modeling_icmoe_sam.IcMoeSamModel",
            }

    def __setattr__(self, key, value):
        # `from_pretrained(..., icmoe_config=...)` sets the attribute after `__init__`: convert and validate here so
        # that every path yields a checked `IcMoeAdapterConfig`.
        if key == "icmoe_config":
            value = _as_adapter_config(value)
            vision_config = self.__dict__.get("vision_config")
            if vision_config is not None and not isinstance(vision_config, dict):
                value.resolve_target_layers(vision_config.num_hidden_layers)
        super().__setattr__(key, value)

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["icmoe_config"] = self.icmoe_config.to_dict()
        return output

    @classmethod
    def from_sam_config(cls, sam_config: SamConfig, icmoe_config: IcMoeAdapterConfig | dict | None = None, **kwargs):
        """Builds an IC-MoE config from a plain `SamConfig` (or another IC-MoE config), keeping its three
        sub-configurations; `kwargs` set this config's own fields."""
        config_dict = sam_config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "icmoe_config", "id2label",
                    "label2id", "num_labels", *SEMANTIC_FIELDS):
            config_dict.pop(key, None)
        return cls(**{**config_dict, **kwargs}, icmoe_config=icmoe_config)




class IcMoeSamSemanticConfig(IcMoeSamConfig):
    r"""
    Configuration of [`IcMoeSamForSemanticSegmentation`]: IC-MoE SAM segmenting a fixed set of classes without any
    prompt. Class 0 is the background.

    Args:
        vision_config, prompt_encoder_config, mask_decoder_config, icmoe_config:
            As in [`IcMoeSamConfig`].
        id2label (`dict[int, str]`):
            The classes, background included (id 0); `num_labels` follows. At least 2.
        semantic_decoder (`str`, *optional*, defaults to `"mask_tokens"`):
            How the prompt is removed from SAM's mask decoder. `"mask_tokens"`: one mask token and one hypernetwork
            MLP per class in place of SAM's, the decoder run once with no prompt (SAMed). `"queries"`: per class,
            `num_query_tokens` learned tokens given to SAM's own decoder as its prompt, one mask per class.
            `training/run.py --prompt none` builds `"queries"`, which scored higher on validation; this default stays
            `"mask_tokens"` because a saved config omits defaults, so changing it would change what existing
            checkpoints load as.
        num_query_tokens (`int`, *optional*, defaults to 2):
            Learned prompt tokens per class (`"queries"` only).
        ce_loss_coef (`float`, *optional*, defaults to 1.0):
            Weight of the cross-entropy over the classes.
        dice_loss_coef (`float`, *optional*, defaults to 1.0):
            Weight of the Dice loss, averaged over the foreground classes.
        label_values (`list[int]`, *optional*):
            The value that stands for each class id in the label maps the model was trained on (index = class id,
            `label_values[0] == 0`), where they differ from the ids: volumes whose labels are not 0 .. N-1, or a
            subset chosen with `--label_ids`. `icmoe-sam predict` writes and scores these values. `None`: the ids.
    """

    model_type = "icmoe_sam_semantic"

    semantic_decoder: str = "mask_tokens"
    num_query_tokens: int = 2
    ce_loss_coef: float = 1.0
    dice_loss_coef: float = 1.0
    label_values: list[int] | None = None

    def __post_init__(self, **kwargs):
        if getattr(self, "auto_map", None) is None:
            self.auto_map = {
                "AutoConfig": "configuration_icmoe_sam.IcMoeSamSemanticConfig",
                "AutoModel": "modeling_icmoe_semantic.IcMoeSamForSemanticSegmentation",
                "AutoModelForSemanticSegmentation": "modeling_icmoe_semantic.IcMoeSamForSemanticSegmentation",
            }
        super().__post_init__(**kwargs)
        if self.semantic_decoder not in SEMANTIC_DECODERS:
            raise ValueError(f"`semantic_decoder` must be one of {SEMANTIC_DECODERS}, got {self.semantic_decoder!r}.")
        self.num_query_tokens = _integer("num_query_tokens", self.num_query_tokens)
        if self.num_query_tokens < 1:
            raise ValueError(f"`num_query_tokens` must be at least 1, got {self.num_query_tokens}.")
        for name in ("ce_loss_coef", "dice_loss_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        if self.num_labels < 2:
            raise ValueError(
                f"A semantic model needs at least 2 classes (the background, id 0, and one more); got {self.num_labels}."
            )
        if sorted(self.id2label) != list(range(self.num_labels)):
            raise ValueError(f"`id2label` must name the classes 0 .. num_labels - 1, got ids {sorted(self.id2label)}.")
        self.label2id = {name: index for index, name in self.id2label.items()}
        if len(self.label2id) != self.num_labels:
            raise ValueError(f"Class names must differ from one another, got {list(self.id2label.values())}.")
        if self.label_values is not None:
            values = [_integer("label_values", value) for value in self.label_values]
            if len(values) != self.num_labels or values[0] != 0 or len(set(values)) != len(values) or min(values) < 0:
                raise ValueError(f"`label_values` must give one distinct value >= 0 per class, 0 for the background "
                                 f"(class 0), {self.num_labels} in all; got {self.label_values}.")
            self.label_values = values


IcMoeSamConfig.register_for_auto_class()
IcMoeSamSemanticConfig.register_for_auto_class()

__all__ = ["IcMoeAdapterConfig", "IcMoeSamConfig", "IcMoeSamSemanticConfig"]
