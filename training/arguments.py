"""Command-line arguments of `training/run.py`, with their sanity checks."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from modeling_icmoe.imaging import resolve_window
from modeling_icmoe.configuration_icmoe_sam import SEMANTIC_DECODERS
from modeling_icmoe.medical.volumes import resolve_slice_axis

from .methods import (
    ADAPTER_PLACEMENTS,
    DEFAULT_LEARNING_RATES,
    LORA_TARGETS,
    METHODS,
    PROMPT_FREE_DECODER,
    PROMPT_FREE_LEARNING_RATES,
    SEMANTIC_METHODS,
    BaselineOptions,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE_MODEL = REPO_ROOT / "training" / "standin" / "sam-standin"
# The simulated MR lesion task: on the embedded real nuclei the stand-in's zero-shot boxes leave fine-tuning almost
# nothing to gain (README, "The two commands"), so the default job runs where fine-tuning matters.
DEFAULT_DATASET = REPO_ROOT / "training" / "data" / "mr_brain_lesion"
PROMPTS = ("box", "point", "box+point", "none")


def _checkpointing_steps(value: str) -> int | str | None:
    if value in (None, "", "none"):
        return None
    if value == "epoch":
        return value
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"--checkpointing_steps must be a positive integer or 'epoch', got {value!r}")
    return int(value)


# Command-line options that override the same-named field of the IC-MoE adapter preset (None = keep the preset's).
ICMOE_CONFIG_OVERRIDES = ("expert_rank", "num_experts_per_tok", "contrastive_loss_coef", "pixel_vote_weight",
                          "vote_loss_coef")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune SAM for medical image segmentation with IC-MoE (or a baseline) and evaluate it."
    )
    data = parser.add_argument_group("model and data")
    data.add_argument("--base_model", default=str(DEFAULT_BASE_MODEL),
                      help="Hub id or folder of a SamModel checkpoint with its processor (default: the offline "
                      "stand-in; pass facebook/sam-vit-base when online).")
    data.add_argument("--method", default="icmoe", choices=METHODS)
    data.add_argument("--icmoe_config", default=None, help="JSON preset of IcMoeAdapterConfig (configuration/).")
    data.add_argument("--expert_rank", type=int, default=None, help="Override of the preset's expert_rank.")
    data.add_argument("--num_experts_per_tok", type=int, default=None, help="Override of the preset's top-k.")
    data.add_argument("--contrastive_loss_coef", type=float, default=None,
                      help="Override of the preset's contrastive weight (default config: 0, off; 0.01 as measured).")
    data.add_argument("--pixel_vote_weight", type=float, default=None,
                      help="Override of the preset's pixel-probability vote weight (default config: 0, router only; "
                      "1.0 as measured, with --vote_loss_coef 0.1).")
    data.add_argument("--vote_loss_coef", type=float, default=None,
                      help="Override of the preset's vote-loss weight (default config: 0; 0.1 with pixel votes).")
    data.add_argument("--lora_rank", type=int, default=4, help="Rank for --method lora.")
    data.add_argument("--adapter_rank", type=int, default=64, help="Bottleneck width for --method adapter.")
    data.add_argument("--lora_alpha", type=float, default=None,
                      help="LoRA's alpha for --method lora (its update is scaled by alpha / rank; default: the rank).")
    data.add_argument("--lora_targets", choices=tuple(LORA_TARGETS), default="qkv",
                      help="What --method lora adapts in each encoder block: the fused qkv projection (default), "
                           "qkv and the attention output (attention), or every linear layer (all).")
    data.add_argument("--lora_dropout", type=float, default=0.0, help="Dropout on LoRA's input for --method lora.")
    data.add_argument("--adapter_placement", choices=ADAPTER_PLACEMENTS, default="mlp",
                      help="Where --method adapter's bottleneck sits in each encoder block: beside the MLP (default) "
                           "or beside the attention's qkv projection.")
    data.add_argument("--adapter_scale", type=float, default=1.0,
                      help="Factor on --method adapter's output (default 1).")
    data.add_argument("--dataset", default=str(DEFAULT_DATASET),
                      help="Hub dataset id, save_to_disk folder, folder with metadata.csv, or a volume folder / CSV of "
                           "volumes (default: the embedded simulated MR lesions, training/data/mr_brain_lesion).")
    data.add_argument("--image_column", default="image")
    data.add_argument("--mask_column", default="mask")
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", default=None, help="Default: test, else validation, else a hold-out.")
    data.add_argument("--validation_fraction", type=float, default=0.2)
    data.add_argument("--label_ids", type=int, nargs="+", default=None,
                      help="Mask values that count as foreground, for masks that are not binary. For volumes: the "
                           "classes, each its own prompt per slice (default: every non-zero label).")
    volumes = parser.add_argument_group(
        "volumes", "For --dataset a Decathlon / nnU-Net folder (imagesTr/, labelsTr/) or a CSV of NIfTI image,label pairs."
    )
    volumes.add_argument("--slice_axis", default="axial",
                         help="Axis the volumes are cut along: axial, coronal, sagittal or 0/1/2 (canonical RAS axes).")
    volumes.add_argument("--window", nargs="+", default=None,
                         help="CT window: a preset (soft_tissue, abdomen, liver, mediastinum, lung, bone, brain) or "
                              "LEVEL WIDTH in HU. Default: percentiles 0.5-99.5 over each volume (MRI).")
    volumes.add_argument("--nsd_tolerance_mm", type=float, default=1.0,
                         help="Tolerance of the normalised surface Dice in the per-volume evaluation.")
    data.add_argument("--streaming", action="store_true",
                      help="Read the training split as a stream (Hub dataset, metadata.csv or save_to_disk folder), "
                           "each process its own share, checked as it is read; needs --max_train_steps and an "
                           "evaluation split. Not for volumes, which are sliced into the datasets cache.")
    data.add_argument("--shuffle_buffer_size", type=int, default=1000,
                      help="With --streaming: examples held in the shuffle buffer.")
    data.add_argument("--label_names", nargs="+", default=None,
                      help="With --prompt none: the class names in id order, the background first (default: the "
                           "labels.json beside the data).")
    data.add_argument("--semantic_decoder", choices=SEMANTIC_DECODERS, default=None,
                      help="With --prompt none: how the prompt is removed from SAM's decoder (default: "
                           f"{PROMPT_FREE_DECODER}, chosen by the prompt-free benchmark on validation).")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument("--dataloader_num_workers", type=int, default=None, help="Default: cores per process - 1.")
    data.add_argument("--preprocessing_num_workers", type=int, default=None,
                      help="Processes that slice volumes into the datasets cache in parallel, each a share of the "
                           "cases (default: one process). Rows and cache are the same whatever the number.")

    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", default="outputs/icmoe-sam")
    train.add_argument("--overwrite_output_dir", action="store_true",
                       help="Replace an earlier run's outputs in --output_dir (model, adapter/, checkpoints/, logs); "
                       "without it such a folder is refused, unless resuming.")
    train.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    train.add_argument("--num_train_epochs", type=int, default=30)
    train.add_argument("--per_device_train_batch_size", type=int, default=4)
    train.add_argument("--per_device_eval_batch_size", type=int, default=8)
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=None,
                       help="Default: the method's measured best (training.methods.DEFAULT_LEARNING_RATES).")
    train.add_argument("--weight_decay", type=float, default=0.01)
    train.add_argument("--mask_decoder_lr_scale", type=float, default=1.0,
                       help="The trained mask decoder's learning rate is --learning_rate times this (every method).")
    train.add_argument("--layer_lr_decay", type=float, default=1.0,
                       help="Layer-wise learning-rate decay: encoder block i of L trains at --learning_rate times "
                            "decay ** (L - i), the patch embedding at decay ** (L + 1); the neck and the decoder at "
                            "the full rate. 1 (default) turns it off. For --method full.")
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--lr_scheduler_type", default="cosine")
    train.add_argument("--num_warmup_steps", type=int, default=None, help="Default: 5%% of the training steps.")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--use_cpu", action="store_true",
                       help="Train every process on the CPU even where GPUs are present (without a GPU, processes "
                            "started by a multi-process launch join over gloo on the CPU in any case).")
    train.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"],
                       help="Default: what `accelerate launch` / its config says.")
    train.add_argument("--prompt", default="box", choices=PROMPTS)
    train.add_argument("--num_points", type=int, default=1, help="Points per prompt for point prompts.")
    train.add_argument("--box_jitter", type=float, default=0.05,
                       help="Training boxes move each edge by up to this fraction of the box size.")
    train.add_argument("--checkpointing_steps", type=_checkpointing_steps, default=None)
    train.add_argument("--resume_from_checkpoint", default=None,
                       help="A checkpoint folder, or `latest`: the newest complete checkpoints/step_N of --output_dir.")
    train.add_argument("--logging_steps", type=int, default=5)
    train.add_argument("--eval_steps", type=int, default=None, help="Evaluate every N steps (and at the end).")
    train.add_argument("--no_zeroshot_eval", action="store_true", help="Skip evaluating the base before training.")
    train.add_argument("--num_example_figures", type=int, default=4)
    train.add_argument("--report_to", default="none", help="Accelerate trackers: none, all, tensorboard, wandb ...")

    hub = parser.add_argument_group("hub")
    hub.add_argument("--push_to_hub", action="store_true")
    hub.add_argument("--hub_model_id", default=None)
    hub.add_argument("--hub_private", action="store_true")
    hub.add_argument("--push_adapter_only", action="store_true")
    hub.add_argument("--hub_token", default=None, help="Default: HF_TOKEN or the saved login.")
    hub.add_argument("--dry_run", action="store_true", help="With --push_to_hub: print what would be uploaded.")
    return parser


# Arguments that hold secrets: never written to a tracker, a log, a checkpoint, eval_results.json or a card.
SECRET_ARGUMENTS = frozenset({"hub_token"})


def tracker_config(args: argparse.Namespace) -> dict:
    """The run's scalar arguments for experiment trackers (TensorBoard, wandb ...), without the secret ones."""
    return {k: v for k, v in vars(args).items() if k not in SECRET_ARGUMENTS and isinstance(v, (int, float, str, bool))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    positive = ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                "gradient_accumulation_steps", "logging_steps", "num_points", "lora_rank", "adapter_rank")
    for name in positive:
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("max_train_steps", "eval_steps", "max_train_samples", "max_eval_samples", "preprocessing_num_workers"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if not 0 < args.validation_fraction < 1:
        parser.error(f"--validation_fraction must be in (0, 1), got {args.validation_fraction}")
    if not 0 <= args.box_jitter < 1:
        parser.error(f"--box_jitter must be in [0, 1), got {args.box_jitter}")
    if args.window is not None:
        try:
            args.window = resolve_window(args.window)
        except ValueError as err:
            parser.error(f"--window: {err}")
    try:
        args.slice_axis = resolve_slice_axis(args.slice_axis)
    except ValueError as err:
        parser.error(f"--slice_axis: {err}")
    if not 0 <= args.nsd_tolerance_mm < math.inf:
        parser.error(f"--nsd_tolerance_mm must be >= 0 and finite, got {args.nsd_tolerance_mm}")
    if args.learning_rate is None:
        rates = PROMPT_FREE_LEARNING_RATES if args.prompt == "none" else DEFAULT_LEARNING_RATES
        args.learning_rate = rates.get(args.method, DEFAULT_LEARNING_RATES[args.method])
    elif not 0 < args.learning_rate < math.inf:
        parser.error(f"--learning_rate must be positive and finite, got {args.learning_rate}")
    try:
        baseline = BaselineOptions.from_args(args)
    except ValueError as err:
        parser.error(f"--{err}")
    for prefix, method in (("lora_", "lora"), ("adapter_", "adapter")):
        unused = [name for name in baseline.changed() if name.startswith(prefix) and args.method != method]
        if unused:
            parser.error(f"--{unused[0]} is for --method {method}, not --method {args.method}")
    if not 0 < args.layer_lr_decay <= 1:
        parser.error(f"--layer_lr_decay must be in (0, 1], got {args.layer_lr_decay}")
    if args.layer_lr_decay != 1.0 and args.method != "full":
        parser.error(f"--layer_lr_decay is for --method full (it decays the rates of SAM's own encoder blocks), not "
                     f"--method {args.method}")
    if not 0 < args.mask_decoder_lr_scale < math.inf:
        parser.error(f"--mask_decoder_lr_scale must be positive and finite, got {args.mask_decoder_lr_scale}")
    for name in ("weight_decay", "max_grad_norm"):
        if not math.isfinite(getattr(args, name)):
            parser.error(f"--{name} must be finite, got {getattr(args, name)}")
    if args.shuffle_buffer_size <= 0:
        parser.error(f"--shuffle_buffer_size must be positive, got {args.shuffle_buffer_size}")
    if args.streaming:
        if args.max_train_steps is None and args.method != "zeroshot":
            parser.error("--streaming needs --max_train_steps: a stream has no length to count epochs by")
        if args.checkpointing_steps == "epoch":
            parser.error("--streaming has no epochs: give --checkpointing_steps a number of steps")
        from .volume_data import is_volume_source

        if is_volume_source(args.dataset):
            parser.error("--streaming reads image datasets; volumes are sliced into the datasets cache instead "
                         "(--preprocessing_num_workers slices them in parallel)")
    if args.prompt == "none":
        # A prompt-free model's class head starts untrained: a zero-shot score of it would measure nothing.
        if args.method not in SEMANTIC_METHODS:
            parser.error(f"--prompt none trains the methods {', '.join(SEMANTIC_METHODS)}, not {args.method} (a "
                         "prompt-free class head starts untrained: there is no zero-shot prompt-free model)")
        if args.streaming:
            parser.error("--prompt none reads its training split up front (not --streaming) so far")
        args.no_zeroshot_eval = True
        args.semantic_decoder = args.semantic_decoder or PROMPT_FREE_DECODER
    elif args.label_names or args.semantic_decoder:
        parser.error("--label_names and --semantic_decoder are for --prompt none")
    if args.overwrite_output_dir and args.resume_from_checkpoint:
        parser.error("--overwrite_output_dir clears checkpoints/ and cannot be combined with --resume_from_checkpoint")
    if args.push_to_hub:
        # Checked before training: a push that can only fail should not cost a training run first.
        if not args.hub_model_id:
            parser.error("--push_to_hub needs --hub_model_id (org/name)")
        if args.method == "zeroshot":
            parser.error("--push_to_hub has nothing to push with --method zeroshot (no model is trained)")
        if args.push_adapter_only and args.method not in ("icmoe", "adapter"):
            parser.error(f"--push_adapter_only pushes IC-MoE adapters; --method {args.method} has none")
        if args.push_adapter_only and (Path(args.base_model).exists() or args.base_model.count("/") != 1):
            parser.error(
                "--push_adapter_only needs --base_model to be a Hub id (org/name) that the adapter repo can name; "
                f"{args.base_model} is a local folder"
            )
    if args.method == "zeroshot":
        args.no_zeroshot_eval = True  # the final evaluation is the zero-shot one
    return args
