#!/usr/bin/env bash
# The GPU-machine checks of the open work, in one command: ``bash scripts/gpu_checks.sh OUT SHA [PART ...]``.
# PARTs (default: all, in this order): tests eval dream head moe llada2 train. Each part runs under its own
# timeout and writes into OUT; logs go to OUT/logs. Needs lm-eval for ``eval`` (``pip install -e ".[eval]"``).
set -u
OUT=${1:?usage: gpu_checks.sh OUT SHA [PART ...]}; SHA=${2:?usage: gpu_checks.sh OUT SHA [PART ...]}; shift 2
PARTS=${*:-tests eval dream head moe llada2 train}
export PYTHONUNBUFFERED=1 GIT_SHA=$SHA; mkdir -p "$OUT/logs"
nvidia-smi --query-gpu=name --format=csv,noheader; python -c "import torch, triton; print(torch.__version__, triton.__version__)"
run() {  # name, timeout (s), command...
  local name=$1 t=$2; shift 2
  timeout "$t" "$@" > "$OUT/logs/$name.txt" 2>&1; echo "$name rc $?"; tail -12 "$OUT/logs/$name.txt"
}
for part in $PARTS; do case $part in
  tests)  XD=$(python -c "import xdist" 2>/dev/null && echo "-n 4")  # 4 workers: ~2 min instead of ~5 on an H100
          run gpu_tests 560 python -m pytest -q -m gpu $XD -p no:cacheprovider --durations=10 ;;
  eval)   run eval_lm 200 python scripts/bench_eval_lm.py --out "$OUT/eval_lm" --tiny-docs 100 --repeats 2 ;;
  dream)  run dream 200 python scripts/bench_decode.py --shape dream-7b --policies dual,block,prefix,none \
            --batches 1,8,32 --shapes 128x128 --timed-steps 31 --sha "$SHA" --out "$OUT/decode_dream_7b.csv" ;;
  head)   run dream_head 80 python scripts/bench_kernels.py --ops dream_head --batches 1,32 --no-compile \
            --no-render --sha "$SHA" --out "$OUT/kernels" ;;
  moe)    run moe 100 python scripts/bench_moe.py --out "$OUT/moe" ;;
  llada2) run llada2_mini 150 python scripts/bench_decode.py --shape llada2-mini --batches 1,32 --shapes 128x256 \
            --reference-max-batch 1 --sha "$SHA" --out "$OUT/decode_llada2_mini.csv"
          run llada2_mini_2048 90 python scripts/bench_decode.py --shape llada2-mini --batches 32 --shapes 128x2048 \
            --at last --no-reference --sha "$SHA" --out "$OUT/decode_llada2_mini_b32x2048.csv"
          run llada_moe_7b 80 python scripts/bench_decode.py --shape llada-moe-7b --batches 1,32 --shapes 128x256 \
            --no-reference --sha "$SHA" --out "$OUT/decode_llada_moe_7b.csv" ;;
  train)  run train_llada2_tiny 500 python scripts/train_llada2_tiny.py --config default --device cuda \
            --out "$OUT/llada2-tiny-tasks" --time-budget 370 --workers 6
          run mul_full_steps 60 python scripts/train_llada2_tiny.py --device cuda --out "$OUT/llada2-tiny-tasks" \
            --eval-only --eval-threshold 1.0 --tasks mul --eval-per-task 200 \
            --eval-json "$OUT/llada2-tiny-tasks/eval_mul_full_steps.json" ;;
  *) echo "unknown part '$part' (allowed: tests eval dream head moe llada2 train)"; exit 2 ;;
esac; done
