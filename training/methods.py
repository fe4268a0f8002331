"""The fine-tuning methods compared by `run.py`, each built from the same base SAM checkpoint.

- `icmoe`:    IC-MoE adapters in the image encoder, mask decoder trained (this project's method).
- `lora`:     PEFT LoRA on the image encoder's fused `qkv` projections by default (SAMed-style; `--lora_targets`
              adds the attention output and the MLP), mask decoder trained.
- `adapter`:  one plain parallel bottleneck adapter per encoder block, beside the MLP by default (SAM-Adapter style;
              `--adapter_placement attention` puts it beside `qkv`), mask decoder trained. Built as an IC-MoE with a
              single basic expert and no routing, voting or contrastive losses.
- `decoder`:  mask decoder only (the Hugging Face SAM fine-tuning tutorial's recipe).
- `full`:     the image encoder and the mask decoder (the prompt encoder stays frozen).
- `zeroshot`: the base model, evaluated without training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers import SamModel

from modeling_icmoe import (
    IcMoeAdapterConfig,
    IcMoeSamForSemanticSegmentation,
    IcMoeSamModel,
    save_icmoe_adapter,
    save_pretrained_with_pipeline,
    run_folder,
    save_semantic_pretrained_with_pipeline,
)
from modeling_icmoe.losses import segmentation_losses, segmentation_targets

METHODS = ("icmoe", "lora", "adapter", "decoder", "full", "zeroshot")
# Each method's default learning rate: the best validation Dice averaged over the benchmark tasks
# (docs/BENCHMARKS.md, "Learning-rate selection"), so that a plain `--method X` run is that method at its best
# measured setting.
DEFAULT_LEARNING_RATES = {"icmoe": 3e-4, "lora": 3e-4, "adapter": 3e-4, "decoder": 1e-4, "full": 3e-4, "zeroshot": 0.0}
# The same for `--prompt none`: each method's rate chosen on the validation split of the prompt-free benchmark
# (docs/BENCHMARKS.md, "Prompt-free accuracy"), and the decoder it chose for IC-MoE.
PROMPT_FREE_LEARNING_RATES = {"icmoe": 3e-3, "lora": 3e-3, "adapter": 3e-3, "decoder": 3e-3, "full": 1e-3}
PROMPT_FREE_DECODER = "queries"


BASE_MODEL_TYPES = ("sam", "icmoe_sam")


def check_base_model(base_model: str) -> None:
    """Raises, before anything is loaded, unless `base_model` is a SAM (or IC-MoE SAM) checkpoint: a local folder
    with its `config.json`, or a Hub id. The messages say what was expected instead of a loader's internals."""
    from transformers.configuration_utils import PreTrainedConfig

    from hub_cards import is_hub_repo_id

    folder = Path(base_model)
    if folder.exists() and not (folder / "config.json").is_file():
        raise ValueError(
            f"--base_model {base_model} is not a model checkpoint: it has no config.json. Give a SAM checkpoint "
            "folder (save_pretrained output) or a Hub id such as facebook/sam-vit-base."
        )
    if not folder.exists() and not is_hub_repo_id(base_model):
        raise ValueError(
            f"--base_model {base_model}: no such folder, and not a Hub id (namespace/name such as "
            "facebook/sam-vit-base)."
        )
    try:
        config, _ = PreTrainedConfig.get_config_dict(base_model)
    except (OSError, ValueError) as error:
        raise ValueError(f"--base_model {base_model}: cannot read its config ({error}).") from error
    model_type = config.get("model_type")
    if model_type not in BASE_MODEL_TYPES:
        raise ValueError(
            f"--base_model {base_model} is a {model_type!r} checkpoint; training needs a SAM checkpoint "
            f"(model_type {' or '.join(map(repr, BASE_MODEL_TYPES))}), such as facebook/sam-vit-base."
        )


# What `--lora_targets` adapts in every image-encoder block: the fused `qkv` projection (SAMed's recipe), the
# attention's output projection too, or every linear layer of the block (attention and MLP).
LORA_TARGETS = {
    "qkv": r"vision_encoder\.layers\.\d+\.attn\.qkv",
    "attention": r"vision_encoder\.layers\.\d+\.attn\.(qkv|proj)",
    "all": r"vision_encoder\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.lin[12])",
}
ADAPTER_PLACEMENTS = ("mlp", "attention")


@dataclasses.dataclass(frozen=True)
class BaselineOptions:
    """How the LoRA and adapter baselines are built, beyond their rank (the defaults are the common recipes).

    `lora_alpha` None means the rank (scale 1); `adapter_scale` multiplies the adapter's output."""

    lora_alpha: float | None = None
    lora_targets: str = "qkv"
    lora_dropout: float = 0.0
    adapter_placement: str = "mlp"
    adapter_scale: float = 1.0

    def __post_init__(self):
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"lora_targets must be one of {tuple(LORA_TARGETS)}, got {self.lora_targets!r}")
        if self.adapter_placement not in ADAPTER_PLACEMENTS:
            raise ValueError(f"adapter_placement must be one of {ADAPTER_PLACEMENTS}, got {self.adapter_placement!r}")
        if self.lora_alpha is not None and not 0 < self.lora_alpha < float("inf"):
            raise ValueError(f"lora_alpha must be positive and finite, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 < self.adapter_scale < float("inf"):
            raise ValueError(f"adapter_scale must be positive and finite, got {self.adapter_scale}")

    @classmethod
    def from_args(cls, args) -> "BaselineOptions":
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    def changed(self) -> dict:
        """The options that differ from the defaults (what a record or a fingerprint adds)."""
        default = BaselineOptions()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


def adapter_baseline_config(rank: int, options: BaselineOptions = BaselineOptions()) -> IcMoeAdapterConfig:
    """A plain bottleneck adapter: one basic expert, top-1 (so its vote is always 1), no IC-MoE losses."""
    return IcMoeAdapterConfig(
        num_shared_experts=0,
        num_basic_experts=1,
        num_semantic_experts=0,
        num_adaptive_experts=0,
        num_experts_per_tok=1,
        expert_rank=rank,
        expert_placement=options.adapter_placement,  # default beside the MLP, as SAM-Adapter's adapters sit
        expert_output_scale=options.adapter_scale,  # default 1, the plain adapter as commonly built
        router_jitter_noise=0.0,
        pixel_vote_weight=0.0,
        router_aux_loss_coef=0.0,
        vote_loss_coef=0.0,
        pixel_loss_coef=0.0,
        contrastive_loss_coef=0.0,
    )


def load_icmoe_config(path: str | None, overrides: dict) -> IcMoeAdapterConfig:
    """An adapter config from a JSON preset (or the defaults), with command-line overrides applied."""
    config = IcMoeAdapterConfig.from_json_file(path) if path else IcMoeAdapterConfig()
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


# The methods that train the prompt-free semantic model: every trained method, each with the same class head and
# decoder parts (`IcMoeSamForSemanticSegmentation`), so that a comparison measures how the encoder is adapted.
SEMANTIC_METHODS = ("icmoe", "lora", "adapter", "decoder", "full")


def plain_encoder_config() -> IcMoeAdapterConfig:
    """No IC-MoE layer (SAM's image encoder unchanged) and no router terms: the prompt-free model that `lora`,
    `decoder` and `full` adapt in their own way."""
    return IcMoeAdapterConfig(target_layers=[], router_aux_loss_coef=0.0, router_z_loss_coef=0.0, vote_loss_coef=0.0,
                              pixel_loss_coef=0.0, contrastive_loss_coef=0.0, train_mask_decoder=True)


def lora_config(rank: int, modules_to_save: list[str], options: BaselineOptions = BaselineOptions()):
    """LoRA on the image encoder's `options.lora_targets` (default the fused `qkv` projections, SAMed's recipe), with
    `modules_to_save` trained whole."""
    from peft import LoraConfig

    alpha = options.lora_alpha if options.lora_alpha is not None else rank
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=options.lora_dropout,
                      target_modules=LORA_TARGETS[options.lora_targets], modules_to_save=modules_to_save)


def _modules_to_save(model: IcMoeSamForSemanticSegmentation) -> list[str]:
    """The semantic model's trained modules as PEFT names them: a `ModuleList` by its elements."""
    names = []
    for name, module in model.trainable_modules():
        names += [f"{name}.{i}" for i in range(len(module))] if isinstance(module, nn.ModuleList) else [name]
    return names


def build_semantic_model(method: str, base_model: str, *, icmoe_config: IcMoeAdapterConfig, lora_rank: int,
                         adapter_rank: int, semantic: dict, baseline: BaselineOptions = BaselineOptions()):
    """The prompt-free model of `method`: the same class head and decoder for every method; the encoder adapted by
    IC-MoE, the plain adapter, LoRA, not at all (`decoder`) or wholly (`full`)."""
    if method not in SEMANTIC_METHODS:
        raise ValueError(f"The prompt-free model is trained by {SEMANTIC_METHODS}, not {method!r}.")
    config = {"icmoe": icmoe_config, "adapter": adapter_baseline_config(adapter_rank, baseline)}.get(
        method, plain_encoder_config())
    config = dataclasses.replace(config, train_mask_decoder=True) if method == "adapter" else config
    model = IcMoeSamForSemanticSegmentation.from_pretrained(base_model, icmoe_config=config, **semantic)
    if method == "lora":
        from peft import get_peft_model

        return get_peft_model(model, lora_config(lora_rank, _modules_to_save(model), baseline))
    if method == "full":
        model.vision_encoder.requires_grad_(True)
    return model


def build_model(
    method: str, base_model: str, *, icmoe_config: IcMoeAdapterConfig, lora_rank: int, adapter_rank: int,
    semantic: dict | None = None, baseline: BaselineOptions = BaselineOptions(),
):
    """The model of `method`, with exactly its trainable parameters requiring grad. `semantic` (the classes,
    `id2label`, and optionally `semantic_decoder`) builds the prompt-free semantic model instead of the prompted one;
    `baseline` says how the LoRA and adapter baselines are built."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    if semantic is not None:
        return build_semantic_model(method, base_model, icmoe_config=icmoe_config, lora_rank=lora_rank,
                                    adapter_rank=adapter_rank, semantic=semantic, baseline=baseline)
    if method == "icmoe":
        return IcMoeSamModel.from_pretrained(base_model, icmoe_config=icmoe_config)
    if method == "adapter":
        config = adapter_baseline_config(adapter_rank, baseline)
        config.train_mask_decoder = True
        return IcMoeSamModel.from_pretrained(base_model, icmoe_config=config)
    model = SamModel.from_pretrained(base_model)
    if method == "lora":
        from peft import get_peft_model

        return get_peft_model(model, lora_config(lora_rank, ["mask_decoder"], baseline))
    model.requires_grad_(method == "full")
    if method == "full":
        # Prompt embeddings a run's prompt kind never uses get no gradient, which DDP rejects; full fine-tuning
        # of SAM for medical images keeps the prompt encoder frozen in any case.
        model.prompt_encoder.requires_grad_(False)
    if method == "decoder":
        model.mask_decoder.requires_grad_(True)
    return model


PROMPT_FREE_BASE_FILE = "prompt_free_base.json"


def load_prompt_free_lora(base_model: str, adapter_dir: str | Path):
    """A prompt-free LoRA run's `adapter/` on its SAM checkpoint: the prompt-free model is rebuilt as the run built it
    (its classes, decoder and empty IC-MoE config, recorded in `prompt_free_base.json`), then PEFT loads the LoRA
    weights and the class head and decoder parts trained whole."""
    from peft import PeftModel

    recorded = json.loads((Path(adapter_dir) / PROMPT_FREE_BASE_FILE).read_text())
    model = IcMoeSamForSemanticSegmentation.from_pretrained(
        base_model, **IcMoeSamForSemanticSegmentation.semantic_config_kwargs(recorded))
    return PeftModel.from_pretrained(model, str(adapter_dir))


def rebuild_model(method: str, base_model: str, state_dict: dict, **build_kwargs) -> nn.Module:
    """A fresh, unsharded model of `method` holding `state_dict` (every tensor, as `accelerator.get_state_dict`
    gathers them): what is saved after sharded (FSDP) training."""
    model = build_model(method, base_model, **build_kwargs)
    model.load_state_dict(state_dict, strict=True)
    return model


def sam_of(model: nn.Module) -> SamModel:
    """The `SamModel` inside a model built by `build_model` (PEFT wraps it)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def model_loss(model: nn.Module, inputs: dict, labels: torch.Tensor, *, output_router_probs: bool = False):
    """Forward pass and training loss. IC-MoE models compute their own objective (for the `adapter` baseline it
    reduces to the segmentation loss); the other methods get the same Dice + BCE + IoU segmentation loss.

    `model` may be wrapped for distributed training (DDP, FSDP, torch.compile): the objective is chosen by the model
    inside, and the forward pass runs through the wrapper, which synchronises the gradients."""
    if isinstance(sam_of(extract_model_from_parallel(model)), IcMoeSamModel):
        outputs = model(**inputs, labels=labels, output_router_probs=output_router_probs)
        return outputs, outputs.loss, outputs.loss_terms
    outputs = model(**inputs)
    targets = segmentation_targets(labels, tuple(outputs.pred_masks.shape[-2:]))
    terms = segmentation_losses(outputs.pred_masks, outputs.iou_scores, targets)
    loss = terms["dice"] + terms["bce"] + terms["iou"]
    return outputs, loss, {name: value.detach() for name, value in terms.items()}


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def encoder_trainable_params(model: nn.Module) -> int:
    """Trainable parameters inside the image encoder (what the parameter budgets compare)."""
    return sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and "vision_encoder" in name)


def match_rank(count, target: int) -> tuple[int, int]:
    """(rank, count(rank)) with count(rank) closest to `target`.

    LoRA and bottleneck parameters grow linearly in the rank, so ranks 1 and 2 give the line and the rank where it
    meets `target`; that rank and its neighbours are then counted (each count builds a model, so few are made)."""
    slope = count(2) - count(1)
    if slope <= 0:
        raise ValueError(f"Trainable encoder parameters do not grow with the rank ({count(1)} at 1, {count(2)} at 2).")
    guess = max(1, round(1 + (target - count(1)) / slope))
    return min(((r, count(r)) for r in (guess - 1, guess, guess + 1) if r >= 1),
               key=lambda rank_count: (abs(rank_count[1] - target), rank_count[0]))


def save_trained(model: nn.Module, processor, output_dir: Path, state_dict: dict | None = None) -> None:
    """Writes the full checkpoint (with the processor and the segmentation pipeline) into `output_dir`, and an
    adapter-only checkpoint into `output_dir/adapter`.

    `state_dict` is the gathered full state (`accelerator.get_state_dict`), needed where parameters are sharded.
    """
    from peft import PeftModel

    peft_adapter = isinstance(model, PeftModel)
    if peft_adapter:
        adapter_dir = output_dir / run_folder.ADAPTER_SUBFOLDER
        model.save_pretrained(adapter_dir)
        # PEFT writes a template card with nothing filled in; the run's card is the output folder's README.md.
        (adapter_dir / "README.md").unlink(missing_ok=True)
        if isinstance(model.get_base_model(), IcMoeSamForSemanticSegmentation):  # what the adapter goes on
            base = model.get_base_model()
            (adapter_dir / PROMPT_FREE_BASE_FILE).write_text(json.dumps(
                {"icmoe_config": base.config.icmoe_config.to_dict(), **base.semantic_config_dict()}, indent=2) + "\n")
        model, state_dict = model.merge_and_unload(), None
    if isinstance(model, IcMoeSamForSemanticSegmentation):  # the image-segmentation pipeline, without prompts
        save_semantic_pretrained_with_pipeline(model, processor, output_dir, state_dict=state_dict)
    else:
        save_pretrained_with_pipeline(model, processor, output_dir, state_dict=state_dict)
    # An IC-MoE adapter-only checkpoint holds what SAM lacks; where the encoder's own weights were trained (LoRA,
    # whose adapter PEFT wrote, or full fine-tuning) it would not, so none is written.
    if isinstance(model, IcMoeSamModel) and not peft_adapter and not trains_sam_encoder(model):
        save_icmoe_adapter(model, output_dir / run_folder.ADAPTER_SUBFOLDER, state_dict=state_dict)


def trains_sam_encoder(model: nn.Module) -> bool:
    """Whether any of SAM's own image-encoder weights (not an IC-MoE layer's) is trained, as in full fine-tuning."""
    sam = sam_of(model)
    adapters = tuple(f"{name}." for name, _ in sam.adapter_modules()) if isinstance(sam, IcMoeSamModel) else ()
    return any(p.requires_grad and name.startswith("vision_encoder.") and not name.startswith(adapters)
               for name, p in sam.named_parameters())


def describe_method(model: nn.Module) -> dict:
    """What the card and `eval_results.json` say about the method's configuration."""
    sam, described = sam_of(model), {}
    if isinstance(sam, IcMoeSamModel):
        described["icmoe_config"] = sam.config.icmoe_config.to_dict()
    if isinstance(sam, IcMoeSamForSemanticSegmentation):
        described["semantic"] = sam.semantic_config_dict()
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        described["lora_config"] = json.loads(json.dumps(peft_config["default"].to_dict(), default=str))
    return described
