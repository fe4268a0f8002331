"""The best Dice a model can reach when its class logits are coarser than the image: the resolution ceiling.

SAM's mask decoder gives logits at 4x the image embedding's grid (48 x 48 for the stand-in's 192-pixel input, 256 x
256 for SAM ViT-B's 1024), and `class_maps_at_original_size` brings them to the image's size bilinearly. This script
scores the perfect logits at that grid: each reference class map's one-hot planes area-averaged to the logit grid
(of the image as the processor resizes and pads it), brought back by the same rule, arg-maxed, and scored with the
benchmark's metric against the reference. Whatever a decoder at that grid learns, its test Dice cannot be expected
to pass this.

    python benchmarks/semantic_resolution_ceiling.py --output benchmarks/results/semantic_resolution_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from modeling_icmoe.pipeline_icmoe_semantic import class_maps_at_original_size  # noqa: E402
from training.semantic_metrics import score_class_maps  # noqa: E402

TASK = REPO_ROOT / "training" / "data" / "ct_abdomen_organs"


def ceiling(maps: list[np.ndarray], num_labels: int, input_size: int, logit_size: int) -> list[np.ndarray]:
    """The class maps that perfect logits at `logit_size` (for a padded square input of `input_size`) give back."""
    out = []
    for classes in maps:
        height, width = classes.shape
        scale = input_size / max(height, width)
        resized = (round(height * scale), round(width * scale))
        one_hot = F.one_hot(torch.from_numpy(classes.astype(np.int64)), num_labels).permute(2, 0, 1)[None].float()
        frame = torch.zeros(1, num_labels, input_size, input_size)
        frame[0, 0] = 1.0  # the padding is background
        frame[:, :, : resized[0], : resized[1]] = F.interpolate(one_hot, size=resized, mode="bilinear",
                                                               align_corners=False)
        logits = F.interpolate(frame, size=(logit_size, logit_size), mode="area")
        out += class_maps_at_original_size(logits, input_size, torch.tensor([resized]), torch.tensor([[height, width]]))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    id2label = {int(k): v for k, v in json.loads((TASK / "labels.json").read_text()).items()}
    rows = [line.split(",") for line in (TASK / "metadata.csv").read_text().splitlines()[1:]]
    maps = [np.array(Image.open(TASK / mask)) for _, mask, split in rows if split == args.split]
    report = {"task": "training/data/ct_abdomen_organs", "split": args.split, "n_images": len(maps),
              "image_size": list(maps[0].shape), "grids": {}}
    for name, input_size, logit_size in (("stand-in SAM (192 px input, 48 x 48 logits)", 192, 48),
                                         ("SAM ViT-B (1024 px input, 256 x 256 logits)", 1024, 256)):
        scores = score_class_maps(ceiling(maps, len(id2label), input_size, logit_size), maps, id2label)
        report["grids"][name] = {"dice": round(scores["dice"], 4),
                                 "per_class_dice": {c: round(v["dice"], 4) for c, v in scores["per_class"].items()}}
        print(f"{name}: Dice over classes {scores['dice']:.4f}")
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
