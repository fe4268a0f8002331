#!/usr/bin/env bash
# The prepared GPU run of the scaling benchmark: IC-MoE training throughput of SAM ViT-B at 1024 px (bf16 mixed
# precision) on one GPU and, on a machine with several, on 2 and on all of them with DDP (multi_gpu.yaml), each
# launched with `accelerate launch` as users launch it. About 5 minutes per setup and repetition on an H100/H200,
# most of it building models and the first steps.
#
#   bash benchmarks/scaling_gpu.sh              # results in benchmarks/results/scaling_<card>.json
#   OUT=/some/folder bash benchmarks/scaling_gpu.sh
#
# Needs torch with CUDA and the project's [train] dependencies (no network: the ViT-B checkpoint is written with
# PyTorch-default weights, which do not change the timing). Then `python benchmarks/scaling.py --report` renders the
# results into docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
card=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
python3 benchmarks/scaling.py --device gpu --vit_b 1024 --per_device_batch 4 --max_train_steps 30 --from_step 10 \
    --reps 2 --work_dir "${WORK_DIR:-/tmp/icmoe-scaling}" --output "$out/scaling_${card}.json" \
    -- --mixed_precision bf16 2>&1 | tee "$out/scaling_${card}.log"
