#!/usr/bin/env bash
# One-call GPU check after a change to the CUDA kernels (issue 16), after `SIZES="1b 8b" run_qmv.sh 1` on a warm
# machine, carry [".devcache/cuda/b"]: attn_check (and with QMV=1 qmv_check --quick: parity of the fused attention
# and matvecs against MLX's ops) -> $OUT/attn.jsonl, $OUT/qmv.jsonl; then one round each (not best of two: a smoke check, not a
# figure) of the engine and mlx-lm on 1B bf16, 1B 4-bit and 8B 4-bit -> $OUT/decode.jsonl. Exits 1 on a parity failure.
set -uo pipefail
export MODELS=$HOME/models
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
rc=0
timeout 150 $BIN/attn_check > $OUT/attn.jsonl 2>&1 || rc=1
[ -z "${QMV:-}" ] || { timeout 150 $BIN/qmv_check --quick > $OUT/qmv.jsonl 2>&1 || rc=1; }
grep -h summary $OUT/*.jsonl
run() {  # NAME CMD...
  local name=$1 line; shift
  line=$(timeout 200 "$@" 2>/tmp/check.err | grep '^{' | tail -1)
  [ -n "$line" ] || tail -3 /tmp/check.err
  echo "{\"run\": \"$name\", \"result\": ${line:-null}}" | tee -a $OUT/decode.jsonl
}
for m in 1b 1b-q4 8b-q4; do
  M=$MODELS/llama-$m P=$MODELS/llama-${m%-q4}/prompt_ids.json
  [ -f $M/config.json ] || python3 xtask/bench/gpu/quantize.py $MODELS/llama-${m%-q4} $M 4 64 >/dev/null 2>&1
  run engine-$m $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
  run mlx_lm-$m python3 xtask/bench/mlx_lm_decode.py $M $P 128
done
exit $rc
