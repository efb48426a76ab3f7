#!/usr/bin/env bash
# The GPU checks of the fast path (issue 12), one command, torch only:  bash bench/gpu_check.sh
#
# Steps in priority order, each given at most what is left of BUDGET_S seconds (default 540), so a run cut
# short still keeps what came first (a bench writes its JSON after every configuration):
#  1. CUDA graphs match eager (bench/cuda_graphs_check.py: DiT-S/2 shape, fp32; about a minute);
#  2. the bars: DiT-XL/2 shape (random weights), batch 32, bf16, 50 DDIM steps, every bench schedule and a
#     tuned schedule file, compiled with one CUDA graph per step pattern, eager timed in the same interleaved
#     rounds (rows' vs_eager);
#  3. memory: eager batch 32, 4 steps, bf16 and tf32, peaks of no cache and cached schedules; then the largest batch
#     whose cached sampling fits in 79 GiB (an 80 GB H100 less its CUDA context, capped on a larger GPU), bf16
#     and tf32;
#  4. the compiled fast path without CUDA graphs against eager, the rows of step 2;
#  5. eager at batch 1, 8 and 128 in bf16, then tf32 (what time is left; cut short, it keeps finished batches).
# One log (gpu_check.log) and the JSON files go to $OUT when set (the device tool's folder), else
# bench/results/gpu/. Set BUDGET_S to the device call's limit less ~30 s. Python: $PYTHON, else python3.
# Exit status: the number of steps that failed, including one cut short before it wrote its JSON (one cut
# after, or never started, is listed at the end: what it finished is kept); 1 at once without a CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
log="$out/gpu_check.log"
py="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # unbuffered: a killed step keeps its log
deadline=$((SECONDS + ${BUDGET_S:-540}))
failed=() cut=()

step() {  # step NAME CAP_S JSON COMMAND...: COMMAND with at most CAP_S s (no more than is left), appended to the
  # log; JSON is the file it must leave in $out (- for none): a step cut short without it counts as failed.
  local name=$1 cap=$2 json=$3 left=$((deadline - SECONDS))
  shift 3
  ((left < cap)) && cap=$left
  if ((cap < 30)); then
    echo "== $name: not started, ${left}s left" | tee -a "$log"
    cut+=("$name")
    return
  fi
  echo "== $name (at most ${cap}s): $*" | tee -a "$log"
  # SIGINT first: the bench stops like a Ctrl-C, after the JSON of its finished configurations is written.
  timeout --signal=INT --kill-after=15 "$cap" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  if ((rc == 124 || rc == 137)) && [[ $json == - || -s $out/$json ]]; then  # timeout: INT, then KILL after 15 s
    echo "== $name: cut short at ${cap}s (what it finished is in $json)" | tee -a "$log"
    cut+=("$name")
  elif ((rc == 124 || rc == 137)); then
    echo "== $name: cut short at ${cap}s before writing $json" | tee -a "$log"
    failed+=("$name")
  elif ((rc != 0)); then
    echo "== $name: exit $rc" | tee -a "$log"
    failed+=("$name")
  fi
}

# The last one is the knee of a default dit-tiny search (ebtune export --knee), retargeted to 28 blocks and DDIM.
schedules='schedules=[none,fora2,fora3,attn-only,mlp-only,ebcache-table,file:bench/schedules/dit-tiny-knee.json]'
xl=("$py" -m ebtune.bench model=dit-xl device=cuda "out=$out")
step device 30 - "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory >> 20, 'MiB')"
if ((${#failed[@]})); then
  echo "== no usable CUDA device; nothing else can run" | tee -a "$log"
  exit 1
fi
step cuda-graphs-check 120 cuda-graphs-check.json "$py" bench/cuda_graphs_check.py --json "$out/cuda-graphs-check.json"
step bars-graphs 300 bench-dit-xl-cuda-bf16-b32-compiled-graphs-vs-eager.json "${xl[@]}" steps=50 batch=32 precision=bf16 "$schedules" compile=true cuda_graphs=true versus_eager=true
step memory 150 bench-dit-xl-cuda-bf16_tf32-b32-eager.json "${xl[@]}" steps=4 batch=32 'precision=[bf16,tf32]' 'schedules=[none,fora2,attn-only,mlp-only]' \
  repeats=1 warmup=0 max_batch=true memory_gib=79
step compiled-no-graphs 240 bench-dit-xl-cuda-bf16-b32-compiled-vs-eager.json "${xl[@]}" steps=50 batch=32 precision=bf16 "$schedules" compile=true versus_eager=true repeats=2
step eager-matrix 600 bench-dit-xl-cuda-bf16_tf32-b1_8_128-eager.json "${xl[@]}" steps=50 'batch=[1,8,128]' 'precision=[bf16,tf32]' "$schedules" repeats=2 warmup=1
echo "== done: failed: ${failed[*]:-none}; cut short or not started: ${cut[*]:-none}; results in $out" | tee -a "$log"
exit "${#failed[@]}"
