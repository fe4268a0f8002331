# Pretrains the offline SAM stand-in `training/standin/sam-standin/` from scratch, on procedurally generated
# "segment anything" scenes: textured ellipses, convex polygons and star-shaped blobs over fractal-noise, gradient
# and stripe backgrounds, occluding one another, each object prompted by a jittered box or a point. No medical
# images are used, so the stand-in plays the part of a general-purpose SAM (facebook/sam-vit-base when online) that
# IC-MoE then adapts. Plain torch loop on CPU (2 cores, about 20 minutes; a DataLoader worker draws the scenes):
# Dice + BCE on the single-mask output for box prompts and on the best of the three multimask outputs for point
# prompts, MSE of the IoU head; AdamW, warmup + cosine, seeded. Saves `SamModel.save_pretrained` + a matching
# `SamProcessor`, and checks that both reload and agree with the trained model.
#
#   python -m tools.pretrain_standin        # from the repository root

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import (
    AutoProcessor,
    SamConfig,
    SamImageProcessor,
    SamMaskDecoderConfig,
    SamModel,
    SamProcessor,
    SamPromptEncoderConfig,
    SamVisionConfig,
    get_cosine_schedule_with_warmup,
    set_seed,
)

from modeling_icmoe.losses import resize_masks, segmentation_losses
from training.sam_init import init_sam_from_scratch
from tools.standin_scenes import (
    MASK_UPSCALE,
    MAX_FILL_CONTRAST,
    ProceduralScenes,
    SceneBatch,
    SceneStream,
)

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parents[1] / "training" / "standin" / "sam-standin"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pretrain the small offline SAM stand-in on procedural scenes.")
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch threads of the training process. One: the scene worker takes the second core, and two OpenMP "
        "threads on a shared 2-core machine stall each other whenever anything else runs.",
    )
    # Model.
    parser.add_argument(
        "--image_size",
        type=int,
        default=192,
        help="192 rather than SAM's 1024 or a round 256: a 12 x 12 patch grid costs less than half the time of 16 x 16 "
        "per step on 2 CPU cores, which buys the steps this budget needs.",
    )
    parser.add_argument("--patch_size", type=int, default=16)
    parser.add_argument("--hidden_size", type=int, default=128, help="Vision transformer width.")
    parser.add_argument("--num_hidden_layers", type=int, default=4)
    parser.add_argument("--num_attention_heads", type=int, default=4)
    parser.add_argument("--window_size", type=int, default=6, help="Windowed attention; must divide the patch grid.")
    parser.add_argument(
        "--global_attn_indexes", type=int, nargs="+", default=[1, 3], help="Blocks with global attention."
    )
    parser.add_argument("--output_channels", type=int, default=64, help="Embedding / prompt / decoder width.")
    # Optimisation.
    parser.add_argument("--max_steps", type=int, default=2800)
    parser.add_argument("--batch_size", type=int, default=8, help="Images per step.")
    parser.add_argument(
        "--prompts_per_image",
        type=int,
        default=4,
        help="Objects prompted per image and step (distinct ones first); they share one encoder pass.",
    )
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_steps", type=int, default=150)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--iou_loss_weight", type=float, default=1.0)
    parser.add_argument(
        "--point_prompt_prob", type=float, default=0.3, help="Share of steps prompted by one point, not a box."
    )
    parser.add_argument("--log_every", type=int, default=50)
    # Scenes.
    parser.add_argument("--max_objects", type=int, default=6, help="Objects per scene, drawn from 1..max.")
    parser.add_argument("--object_radius", type=float, nargs=2, default=(0.06, 0.32), help="Fraction of the side.")
    parser.add_argument("--min_visible_fraction", type=float, default=0.5, help="Prompt only objects this visible.")
    parser.add_argument("--min_object_pixels", type=int, default=100, help="Prompt only objects this large.")
    parser.add_argument("--min_fill_contrast", type=float, default=0.25, help="Colour distance object-background.")
    parser.add_argument("--box_noise", type=float, default=0.1, help="Box jitter std as a fraction of its side.")
    parser.add_argument("--box_noise_max", type=float, default=6.0, help="Box jitter limit in pixels.")
    parser.add_argument("--pad_prob", type=float, default=0.25, help="Scenes shorter than square, padded as SAM pads.")
    parser.add_argument("--grayscale_prob", type=float, default=0.3)
    parser.add_argument("--blur_prob", type=float, default=0.3, help="Scenes blurred by halving and restoring their size.")
    parser.add_argument("--max_noise_std", type=float, default=0.06)
    # Held-out evaluation on scenes from another seed, prompted by tight boxes.
    parser.add_argument("--eval_images", type=int, default=96)
    parser.add_argument("--eval_seed", type=int, default=12345)
    args = parser.parse_args()

    grid, remainder = divmod(args.image_size, args.patch_size)
    if remainder:
        parser.error(f"--patch_size {args.patch_size} must divide --image_size {args.image_size}")
    if grid % args.window_size:
        parser.error(f"--window_size {args.window_size} must divide the {grid} x {grid} patch grid")
    if any(not 0 <= index < args.num_hidden_layers for index in args.global_attn_indexes):
        parser.error(f"--global_attn_indexes must lie in [0, {args.num_hidden_layers}), got {args.global_attn_indexes}")
    # The decoder's cross-attention works at half the output width (SAM's attention_downsample_rate of 2).
    if args.hidden_size % args.num_attention_heads or (args.output_channels // 2) % args.num_attention_heads:
        parser.error("--num_attention_heads must divide --hidden_size and --output_channels / 2")
    if args.output_channels % 2:
        parser.error(f"--output_channels must be even, got {args.output_channels}")
    low, high = args.object_radius
    if not 0 < low < high < 0.5:
        parser.error(f"--object_radius must satisfy 0 < low < high < 0.5, got {low} {high}")
    for name in ("point_prompt_prob", "pad_prob", "grayscale_prob", "blur_prob", "min_visible_fraction"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name} must be a probability, got {getattr(args, name)}")
    if not 0.0 <= args.min_fill_contrast < MAX_FILL_CONTRAST:
        parser.error(f"--min_fill_contrast must be in [0, {MAX_FILL_CONTRAST}), got {args.min_fill_contrast}")
    if min(args.max_steps, args.batch_size, args.prompts_per_image, args.max_objects, args.eval_images) < 1:
        parser.error("--max_steps, --batch_size, --prompts_per_image, --max_objects and --eval_images must be >= 1")
    if not 0 <= args.warmup_steps < args.max_steps:
        parser.error(f"--warmup_steps must be in [0, --max_steps), got {args.warmup_steps}")
    return args


def standin_config(args: argparse.Namespace) -> SamConfig:
    """A small SamConfig whose shared fields (widths, image and patch size) agree across the three parts."""
    vision = SamVisionConfig(
        hidden_size=args.hidden_size,
        output_channels=args.output_channels,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        image_size=args.image_size,
        patch_size=args.patch_size,
        window_size=args.window_size,
        global_attn_indexes=args.global_attn_indexes,
        num_pos_feats=args.output_channels // 2,
        mlp_dim=args.hidden_size * 4,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=args.output_channels, image_size=args.image_size, patch_size=args.patch_size
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=args.output_channels,
        mlp_dim=args.output_channels * 4,
        num_attention_heads=args.num_attention_heads,
        iou_head_hidden_dim=args.output_channels,
    )
    return SamConfig(
        vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict()
    )


def dice_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice of `logits > 0`, upsampled to the target size, against binary targets; one value per mask."""
    logits = F.interpolate(logits.flatten(0, -3).unsqueeze(1), size=targets.shape[-2:], mode="bilinear")
    predicted = logits.squeeze(1) > 0
    truth = targets.flatten(0, -3)
    intersection = (predicted & truth).flatten(1).sum(-1).float()
    total = (predicted.flatten(1).sum(-1) + truth.flatten(1).sum(-1)).float()
    return torch.where(total > 0, 2 * intersection / total.clamp(min=1), torch.ones_like(total))


@torch.no_grad()
def evaluate(model: SamModel, scenes: ProceduralScenes, args: argparse.Namespace) -> dict[str, float]:
    """Dice on held-out scenes: tight boxes through the single-mask output, and one point through the multimask
    output with the highest predicted IoU. `box_fill` is the Dice of predicting the whole box, for reference."""
    model.eval()
    gen = torch.Generator().manual_seed(args.eval_seed)
    totals = {"dice_box": 0.0, "dice_point": 0.0, "dice_box_fill": 0.0}
    count = 0
    for start in range(0, args.eval_images, args.batch_size):
        batch = scenes.sample(min(args.batch_size, args.eval_images - start), gen, jitter_boxes=False)
        embeddings = model.get_image_embeddings(batch.pixel_values)
        single = model(image_embeddings=embeddings, input_boxes=batch.tight_boxes, multimask_output=False)
        totals["dice_box"] += dice_scores(single.pred_masks[:, :, 0], batch.masks).sum().item()
        multi = model(image_embeddings=embeddings, input_points=batch.points, multimask_output=True)
        best = multi.iou_scores.argmax(dim=-1)[..., None, None, None]  # (B, P, 1, 1, 1)
        chosen = multi.pred_masks.gather(2, best.expand(-1, -1, 1, *multi.pred_masks.shape[-2:]))[:, :, 0]
        totals["dice_point"] += dice_scores(chosen, batch.masks).sum().item()
        x1, y1, x2, y2 = batch.tight_boxes.long().unbind(-1)  # (B, P) each
        xs, ys = scenes.xs.long(), scenes.ys.long()
        box_fill = (xs >= x1[..., None, None]) & (xs <= x2[..., None, None])
        box_fill &= (ys >= y1[..., None, None]) & (ys <= y2[..., None, None])  # (B, P, S, S)
        totals["dice_box_fill"] += dice_scores(box_fill.float() - 0.5, batch.masks).sum().item()
        count += batch.masks.shape[0] * batch.masks.shape[1]
    model.train()
    return {key: value / count for key, value in totals.items()}


def training_loss(model: SamModel, batch: SceneBatch, use_points: bool, args: argparse.Namespace) -> dict:
    """Box prompts train SAM's single-mask output, a point prompt the best of its three masks: how SAM is prompted
    downstream (`multimask_output` only for points), and one decoder pass per step."""
    embeddings = model.vision_encoder(batch.pixel_values).last_hidden_state
    mask_size = embeddings.shape[-1] * MASK_UPSCALE
    targets = resize_masks(batch.masks, (mask_size, mask_size))
    prompts = {"input_points": batch.points} if use_points else {"input_boxes": batch.boxes}
    outputs = model(image_embeddings=embeddings, multimask_output=use_points, **prompts)
    terms = segmentation_losses(outputs.pred_masks, outputs.iou_scores, targets)
    loss = terms["dice"] + terms["bce"] + args.iou_loss_weight * terms["iou"]
    return {"loss": loss, **{key: value.detach() for key, value in terms.items()}}


def build_processor(config: SamConfig) -> SamProcessor:
    image_size = config.vision_config.image_size
    mask_size = config.prompt_encoder_config.image_embedding_size * MASK_UPSCALE
    image_processor = SamImageProcessor(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": mask_size},
        mask_pad_size={"height": mask_size, "width": mask_size},
    )
    return SamProcessor(image_processor=image_processor)


@torch.no_grad()
def verify_saved(model: SamModel, folder: Path, scenes: ProceduralScenes) -> None:
    """Reloads the checkpoint and processor from disk and runs one non-square image through both."""
    reloaded = SamModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    config = reloaded.config
    mask_size = config.prompt_encoder_config.image_embedding_size * MASK_UPSCALE
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    mask = Image.fromarray(np.pad(np.full((40, 50), 255, dtype=np.uint8), ((20, 36), (30, 48))))
    inputs = processor(images=image, input_boxes=[[[30, 20, 79, 59]]], segmentation_maps=mask, return_tensors="pt")
    size = config.vision_config.image_size
    if tuple(inputs["pixel_values"].shape) != (1, 3, size, size):
        raise ValueError(f"pixel_values have shape {tuple(inputs['pixel_values'].shape)}, expected (1, 3, {size}, {size})")
    if tuple(inputs["labels"].shape) != (1, mask_size, mask_size):
        raise ValueError(f"labels have shape {tuple(inputs['labels'].shape)}, expected (1, {mask_size}, {mask_size})")
    outputs = reloaded(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=True)
    if tuple(outputs.pred_masks.shape[-2:]) != (mask_size, mask_size):
        raise ValueError(f"pred_masks are {tuple(outputs.pred_masks.shape[-2:])}, expected {mask_size} x {mask_size}")
    expected = model.eval()(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"])
    if not torch.allclose(outputs.pred_masks, expected.pred_masks, atol=1e-4):
        raise ValueError("the reloaded checkpoint predicts differently from the trained model")
    print(f"verified {folder}: pixel_values {tuple(inputs['pixel_values'].shape)}, labels {tuple(inputs['labels'].shape)}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.num_threads)
    set_seed(args.seed)
    started, started_cpu = time.perf_counter(), time.process_time()

    config = standin_config(args)
    model = init_sam_from_scratch(SamModel(config), seed=args.seed).train()
    print(f"stand-in SAM: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    scenes = ProceduralScenes(args)
    gen = torch.Generator().manual_seed(args.seed)
    # One worker: a single stream keeps the batches reproducible, and it takes the core the model leaves free.
    loader = iter(torch.utils.data.DataLoader(SceneStream(args, args.seed), batch_size=None, num_workers=1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)

    running: dict[str, float] = {}
    for step in range(1, args.max_steps + 1):
        use_points = bool(torch.rand(1, generator=gen) < args.point_prompt_prob)
        batch = next(loader)
        terms = training_loss(model, batch, use_points, args)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for key, value in terms.items():
            running[key] = running.get(key, 0.0) + value.item()
        if step % args.log_every == 0 or step == args.max_steps:
            summary = " ".join(f"{key} {value / args.log_every:.4f}" for key, value in running.items())
            elapsed, cpu = time.perf_counter() - started, time.process_time() - started_cpu
            # CPU time of this process is what a step costs on an idle machine (the scene worker runs beside it).
            print(
                f"step {step}/{args.max_steps} {summary} lr {scheduler.get_last_lr()[0]:.2e} "
                f"wall {elapsed:.0f}s cpu {cpu:.0f}s",
                flush=True,
            )
            running = {}

    metrics = evaluate(model, scenes, args)
    print("held-out procedural scenes: " + " ".join(f"{key} {value:.4f}" for key, value in metrics.items()))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output_dir)
    build_processor(config).save_pretrained(args.output_dir)
    verify_saved(model, args.output_dir, scenes)
    size_mb = (args.output_dir / "model.safetensors").stat().st_size / 2**20
    print(f"saved {args.output_dir} ({size_mb:.1f} MiB) in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
