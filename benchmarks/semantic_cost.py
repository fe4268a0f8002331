"""What a volume costs to segment without prompts, against the prompted path (issue 21's cost target).

Both paths run as `icmoe-sam predict` runs them, on the same volume: the prompted IC-MoE model with one box per class
and slice taken from the reference labels (`volumes.segment_volume`, one image-encoder pass per slice, then one
decoder pass per box), and the prompt-free model (`volumes.segment_volume_without_prompts`) with each of its two
decoders (`mask_tokens`: one decoder pass per slice for all classes; `queries`: one decoder pass per class and
slice). Repetitions are interleaved and each ratio is taken within a repetition (`benchmarks/measure.py`), so the
shared machine's drift cancels. Models are untrained: the cost does not depend on the weights' values.

    python benchmarks/semantic_cost.py --output benchmarks/results/semantic_cost_cpu.json            # the stand-in
    python benchmarks/semantic_cost.py --vit_b --max_slices 4 --reps 3 \\
        --output benchmarks/results/semantic_cost_cpu_vit_b.json      # SAM ViT-B at 1024 px, a few slices (CPU)
    python benchmarks/semantic_cost.py --vit_b --device cuda --output benchmarks/results/semantic_cost_gpu.json

The default volume is the first test case of `training/data/ct_abdomen_volumes` (112 x 112 x 24, five organs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.measure import interleaved, summarize  # noqa: E402
from modeling_icmoe import IcMoeSamForSemanticSegmentation, IcMoeSamModel  # noqa: E402
from modeling_icmoe.medical.volumes import (  # noqa: E402
    Volume,
    load_label_map,
    load_volume,
    prompts_from_label_map,
    segment_volume,
    segment_volume_without_prompts,
)
from training.arguments import DEFAULT_BASE_MODEL  # noqa: E402

DATA = REPO_ROOT / "training" / "data" / "ct_abdomen_volumes"
DEFAULT_VOLUME = DATA / "imagesTs" / "abdomen_012.nii.gz"
PATHS = ("prompted", "mask_tokens", "queries")
AXIAL = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", default=str(DEFAULT_BASE_MODEL), help="A SAM checkpoint with its processor.")
    parser.add_argument("--vit_b", action="store_true",
                        help="SAM ViT-B at --image_size with PyTorch-default weights, written to a scratch folder "
                             "(instead of --base_model).")
    parser.add_argument("--image_size", type=int, default=1024)
    parser.add_argument("--volume", default=str(DEFAULT_VOLUME))
    parser.add_argument("--labels", default=None, help="Its label map (default: the matching labelsTs/ file).")
    parser.add_argument("--max_slices", type=int, default=None,
                        help="Only the first N slices holding every class (ViT-B on a CPU is slow).")
    parser.add_argument("--batch_size", type=int, default=8, help="Slices per forward pass, as predict's.")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num_threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    args.command = "python benchmarks/semantic_cost.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    return args


def vit_b_base(folder: Path, image_size: int) -> str:
    """SAM ViT-B at `image_size` with PyTorch-default weights and its processor."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    from training.sam_init import init_sam_from_scratch

    config = SamConfig(vision_config={"image_size": image_size}, prompt_encoder_config={"image_size": image_size})
    init_sam_from_scratch(SamModel(config), seed=0).save_pretrained(folder)
    low_res = image_size // 4
    SamProcessor(SamImageProcessor(
        size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": low_res}, mask_pad_size={"height": low_res, "width": low_res},
    )).save_pretrained(folder)
    return str(folder)


def first_slices(volume: Volume, labels: Volume, count: int) -> tuple[Volume, Volume]:
    """The first `count` axial slices that hold every class of `labels` (both volumes cut alike)."""
    classes = set(np.unique(labels.data)) - {0}
    keep = [k for k in range(labels.shape[AXIAL]) if set(np.unique(labels.data[:, :, k])) >= classes][:count]
    if len(keep) < count:
        raise ValueError(f"Only {len(keep)} slices hold every class {sorted(classes)}; ask for fewer.")
    return tuple(dataclasses.replace(v, data=np.ascontiguousarray(v.data[:, :, keep])) for v in (volume, labels))


def run_benchmark(args: argparse.Namespace) -> dict:
    from transformers import SamProcessor
    from transformers.utils import logging

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    logging.set_verbosity_error()
    device = torch.device(args.device)
    volume = load_volume(args.volume)
    labels_path = args.labels or str(Path(args.volume).parent.parent / "labelsTs" / Path(args.volume).name)
    labels = load_label_map(labels_path, volume)
    if args.max_slices:
        volume, labels = first_slices(volume, labels, args.max_slices)
    prompts = prompts_from_label_map(labels, AXIAL)
    classes = sorted(set(np.unique(labels.data)) - {0})
    id2label = {0: "background", **{index: f"class_{int(c)}" for index, c in enumerate(classes, start=1)}}
    with tempfile.TemporaryDirectory(prefix="icmoe-semantic-cost-") as scratch:
        base = vit_b_base(Path(scratch) / "sam", args.image_size) if args.vit_b else args.base_model
        processor = SamProcessor.from_pretrained(base)
        models = {"prompted": IcMoeSamModel.from_pretrained(base)}
        for decoder in PATHS[1:]:
            models[decoder] = IcMoeSamForSemanticSegmentation.from_pretrained(base, id2label=id2label,
                                                                              semantic_decoder=decoder)
    for model in models.values():
        model.to(device).eval()
    common = {"axis": AXIAL, "slices_per_batch": args.batch_size, "progress": False}

    @torch.no_grad()
    def prompted():
        segment_volume(models["prompted"], processor, volume, prompts, **common)

    def without_prompts(decoder: str):
        return torch.no_grad()(lambda: segment_volume_without_prompts(models[decoder], processor, volume, **common))

    fns = {"prompted": prompted, **{decoder: without_prompts(decoder) for decoder in PATHS[1:]}}
    times = interleaved(fns, reps=args.reps, warmup=args.warmup, device=device)
    summary = summarize(times, "prompted")
    slices = volume.shape[AXIAL]
    return {
        "what": "Seconds to segment one volume: the prompted IC-MoE with one box per class and slice (from the "
                "labels) against the prompt-free model with each decoder; ratios per repetition.",
        "command": args.command,
        "machine": (torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()}"
                    f" threads") + f"; {platform.platform()}; torch {torch.__version__}",
        "base_model": f"SAM ViT-B, {args.image_size} px, untrained weights" if args.vit_b else (
            str(Path(args.base_model).resolve().relative_to(REPO_ROOT))
            if Path(args.base_model).resolve().is_relative_to(REPO_ROOT) else args.base_model),
        "volume": {"path": str(Path(args.volume).resolve().relative_to(REPO_ROOT))
                   if Path(args.volume).resolve().is_relative_to(REPO_ROOT) else args.volume,
                   "shape": list(volume.shape), "slices": slices, "classes": len(id2label) - 1,
                   "prompts": len(prompts)},
        "batch_size": args.batch_size, "reps": args.reps, "warmup": args.warmup,
        "paths": {name: {**entry, "slices_per_s": slices / entry["median_s"]} for name, entry in summary.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = run_benchmark(args)
    for name, entry in report["paths"].items():
        ratio = entry.get("ratio_to_prompted", {})
        print(f"{name:<12} {entry['median_s']:8.3f} s  ({entry['slices_per_s']:.2f} slices/s)"
              + (f"  x{ratio['median']:.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}] of prompted" if ratio else ""))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
