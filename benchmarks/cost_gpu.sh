#!/usr/bin/env bash
# The prepared GPU run of the cost benchmark (issue: cost close to SAM and LoRA): SAM ViT-B at 1024 px, inference in
# bfloat16 and training in bfloat16 mixed precision, SDPA attention, and the same in float32 for comparison; the
# bf16 forward also under torch.compile. About 5 minutes on one H200, most of it building models.
#
#   bash benchmarks/cost_gpu.sh                 # results in benchmarks/results/
#   OUT=/some/folder bash benchmarks/cost_gpu.sh
#
# Needs torch with CUDA, transformers, peft, safetensors and scipy (no install, no network); the repository root is
# put on PYTHONPATH. Then `python benchmarks/cost.py --report` renders the results into docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
python3 benchmarks/cost.py --device cuda --dtype bfloat16 --compile --reps 10 --warmup 3 \
    --output "$out/cost_${card}_bf16.json" --report_path "$out/cost_${card}.md" 2>&1 | tee "$out/cost_${card}_bf16.log"
python3 benchmarks/cost.py --device cuda --dtype float32 --reps 10 --warmup 3 --sections forward train \
    --output "$out/cost_${card}_fp32.json" --report_path "$out/cost_${card}.md" 2>&1 | tee "$out/cost_${card}_fp32.log"
