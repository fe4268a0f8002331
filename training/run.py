"""Fine-tune SAM for medical image segmentation with IC-MoE, or a baseline, and evaluate it.

Trains on any `datasets` source of (image, mask) pairs with box and/or point prompts derived from the masks,
on one CPU, one GPU or many (DDP, FSDP, multi-node) through Accelerate, and writes the model (full and
adapter-only safetensors), the processor, eval_results.json, train_log.jsonl, figures and a model card.

    accelerate launch training/run.py                      # offline default: stand-in SAM, simulated MR lesions
    accelerate launch --config_file configuration/accelerate/multi_gpu.yaml training/run.py \
        --base_model facebook/sam-vit-base --dataset <hub id or folder> --method icmoe
    python training/run.py --method lora                   # without a launcher, one process
"""

from __future__ import annotations

import sys
from pathlib import Path

# `accelerate launch training/run.py` puts training/ on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.arguments import parse_args  # noqa: E402
from training.loop import run  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
