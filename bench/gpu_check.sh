#!/usr/bin/env bash
# The GPU check of the fast path (issue 12): DiT-XL/2 shape (random weights), batch 32, bf16, 50 DDIM steps,
# eager then compiled, every bench schedule. Needs torch only; about 5 minutes on one H100.
# Run from the repository root: bash bench/gpu_check.sh   (JSON goes to $OUT if set, else bench/results/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
for compile in false true; do
  python -m ebtune.bench model=dit-xl steps=50 batch=32 precision=bf16 \
    'schedules=[none,fora2,fora3,attn-only,mlp-only,ebcache-table]' compile=$compile device=cuda out="$out"
done
