#!/usr/bin/env bash
# The GPU check of the fast path (issue 12), one command: bash bench/gpu_check.sh   (from anywhere)
#  1. CUDA graphs match eager (bench/cuda_graphs_check.py, DiT-S/2 shape, fp32 without TF32; under a minute);
#  2. DiT-XL/2 shape (random weights), batch 32, bf16, 50 DDIM steps, every bench schedule: the compiled fast
#     path with eager timed in the same interleaved rounds (vs_eager), then compiled + CUDA graphs.
# Needs torch only; about 6-8 minutes on one H100. JSON goes to $OUT if set, else bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
python bench/cuda_graphs_check.py --json "$out/cuda-graphs-check.json"
schedules='schedules=[none,fora2,fora3,attn-only,mlp-only,ebcache-table]'
python -m ebtune.bench model=dit-xl steps=50 batch=32 precision=bf16 "$schedules" compile=true versus_eager=true \
  device=cuda out="$out"
python -m ebtune.bench model=dit-xl steps=50 batch=32 precision=bf16 "$schedules" compile=true cuda_graphs=true \
  device=cuda out="$out"
