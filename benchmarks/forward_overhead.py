"""Forward-time overhead and parameter budget of IC-MoE at SAM ViT-B size.

Builds SAM ViT-B (random weights: timing and parameter counts do not depend on them) and the same model with
IC-MoE adapters, then times eval forward passes at 1024 x 1024, batch 1, interleaving the two models in one
process so that both see the same machine state. Optionally also times one training step (forward + backward)
of IC-MoE against PEFT LoRA on the encoder's qkv (rank 4, SAMed-style) and decoder-only fine-tuning.

    python benchmarks/forward_overhead.py --device cuda --dtype bfloat16
    python benchmarks/forward_overhead.py --device cpu --iters 3 --warmup 1   # slow, but runs anywhere

Prints a JSON report; `--output` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import SamConfig, SamModel

from modeling_icmoe import IcMoeAdapterConfig, get_icmoe_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--image_size", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--iters", type=int, default=30, help="Timed forward passes per model.")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="Also time training steps of IC-MoE, LoRA, decoder.")
    parser.add_argument("--sdpa", action="store_true", help="Use SDPA attention in the encoder (default eager).")
    parser.add_argument("--compile", action="store_true",
                        help="Also time both models under torch.compile(mode='reduce-overhead') (CUDA graphs).")
    parser.add_argument("--profile", action="store_true", help="Print the top kernels of one IC-MoE forward.")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _interleaved(fns: dict, *, iters: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, run round-robin so that drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            times[name].append(_time(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    # ViT-B sizes are SamVisionConfig's defaults.
    config = SamConfig(
        vision_config={"image_size": args.image_size}, prompt_encoder_config={"image_size": args.image_size}
    )
    attn = "sdpa" if args.sdpa else "eager"
    base = SamModel._from_config(config, attn_implementation=attn).to(device=device, dtype=dtype).eval()
    icmoe = get_icmoe_model(base, IcMoeAdapterConfig()).to(device=device, dtype=dtype).eval()

    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device, dtype=dtype)
    boxes = torch.tensor([[[100.0, 120.0, 600.0, 700.0]]] * args.batch_size, device=device, dtype=dtype)

    def forward(model):
        def run():
            with torch.inference_mode():
                model(pixel_values=pixel_values, input_boxes=boxes)

        return run

    forward_times = _interleaved(
        {"sam": forward(base), "icmoe": forward(icmoe)}, iters=args.iters, warmup=args.warmup, device=device
    )
    sam_params = sum(p.numel() for p in base.parameters())
    encoder_params = sum(p.numel() for p in base.vision_encoder.parameters())
    adapter_params = sum(p.numel() for _, m in icmoe.adapter_modules() for p in m.parameters())
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "attention": attn,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "forward_seconds": forward_times,
        "forward_ratio_icmoe_over_sam": forward_times["icmoe"] / forward_times["sam"],
        "sam_params": sam_params,
        "sam_vision_encoder_params": encoder_params,
        "icmoe_encoder_side_trainable_params": adapter_params,
        "icmoe_encoder_side_share_of_sam": adapter_params / sam_params,
    }
    if args.compile:
        compiled = _interleaved(
            {"sam": forward(torch.compile(base, mode="reduce-overhead")),
             "icmoe": forward(torch.compile(icmoe, mode="reduce-overhead"))},
            iters=args.iters, warmup=max(3, args.warmup), device=device,
        )
        report["compiled_forward_seconds"] = compiled
        report["compiled_forward_ratio_icmoe_over_sam"] = compiled["icmoe"] / compiled["sam"]
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            forward(icmoe)()
            _sync(device)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25))
    if args.train:
        report["train_step"] = _train_steps(base, icmoe, pixel_values, boxes, args, device)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def _train_steps(base, icmoe, pixel_values, boxes, args, device) -> dict:
    """Seconds per forward + backward of IC-MoE (its full loss), LoRA on qkv and decoder-only."""
    from peft import LoraConfig, get_peft_model

    from modeling_icmoe.losses import segmentation_losses, segmentation_targets

    labels = torch.zeros(pixel_values.shape[0], args.image_size, args.image_size, device=device)
    labels[:, 200:600, 150:500] = 1
    low_res = args.image_size // 4  # SAM predicts masks at 4x the 16-pixel patch grid
    targets = segmentation_targets(labels[:, None], (low_res, low_res))  # the rule every method trains with

    lora = get_peft_model(
        SamModel._from_config(base.config, attn_implementation=icmoe.config._attn_implementation)
        .to(device=device, dtype=pixel_values.dtype),
        LoraConfig(r=4, lora_alpha=4, target_modules=["qkv"]),
    )
    decoder_only = base
    for name, p in decoder_only.named_parameters():
        p.requires_grad_(name.startswith("mask_decoder."))

    def baseline_step(model):
        def run():
            outputs = model(pixel_values=pixel_values, input_boxes=boxes)
            terms = segmentation_losses(outputs.pred_masks, outputs.iou_scores, targets)
            (terms["dice"] + terms["bce"] + terms["iou"]).backward()

        return run

    def icmoe_step():
        icmoe(pixel_values=pixel_values, input_boxes=boxes, labels=labels).loss.backward()

    for model in (icmoe, lora, decoder_only):
        model.train()
    times = _interleaved(
        {"icmoe": icmoe_step, "lora_qkv_r4": baseline_step(lora), "decoder_only": baseline_step(decoder_only)},
        iters=max(1, args.iters // 3),
        warmup=max(1, args.warmup // 2),
        device=device,
    )
    return {
        "seconds": times,
        "icmoe_over_lora": times["icmoe"] / times["lora_qkv_r4"],
        "trainable_params": {
            "icmoe": sum(p.numel() for p in icmoe.parameters() if p.requires_grad),
            "lora_qkv_r4": sum(p.numel() for p in lora.parameters() if p.requires_grad),
            "decoder_only": sum(p.numel() for p in decoder_only.parameters() if p.requires_grad),
        },
    }


if __name__ == "__main__":
    main()
