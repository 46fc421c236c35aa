#!/usr/bin/env bash
# One device call for the dense matvecs (issue 16's 8B bfloat16 roofline), carry [".devcache/gpu"] (stage_kernels.sh;
# H100/H200): dmv behind fast::linear (MLXENGINE_CUDA_DMV) and the fused dense layers (fdmv: norm + q/k/v, o +
# residual, norm + gate/up + SwiGLU, down + residual; MLXENGINE_CUDA_QMV_DENSE), both on by default since session 11.
#   1. `qmv_check --dense` -> $OUT/dmv.jsonl: dmv's errors at 1 and 4 rows on the 8B shapes and its bandwidth against
#      MLX's gemv, the calls independent (they overlap in MLX's graph, hiding part-filled waves) and chained (one after
#      another, as in decode), and the fused dense kernels' errors on a layer of each family;
#   2. decode (random weights, 512-token prompt, 128 greedy tokens) -> $OUT/decode.jsonl: 8B and 1B bfloat16 (8B
#      first), the engine as shipped (MLX's gemv), each of VARIANTS (below) and mlx-lm, ROUNDS (default 2) rounds;
#      with Q4=1 (default on an H200 alone: issue 16's 400 tok/s there) the 8B MLX 4-bit model too, the engine, each
#      of Q4_VARIANTS (default none) and mlx-lm;
#   3. parity_gpu over the parity fixtures with PARITY_VARIANT (default fdmv) on, after round 1 -> $OUT/parity.jsonl.
# VARIANTS (default "mlxgemv dmv fdmv_u4 fdmv_u1"): dmv_env.sh's names (dmv, fdmv, mlxgemv or base, then suffixes
# such as _sk1, _u2, _w6, _t128).
# Exits 1 on an error or parity failure.
set -uo pipefail
export MODELS=$HOME/models
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
rc=0
source xtask/bench/gpu/dmv_env.sh
variant_env() { dmv_env "$1"; }
env MLXENGINE_CUDA_DMV=1 MLXENGINE_CUDA_QMV_DENSE=1 timeout 120 $BIN/qmv_check --dense > $OUT/dmv.jsonl 2>&1 || rc=1
grep -h summary $OUT/dmv.jsonl
python3 - $OUT/dmv.jsonl <<'PY'
import json, sys
for line in open(sys.argv[1]):
    d = json.loads(line) if line.startswith("{") else {}
    if "ours_chain_us" in d:
        print(f'{d["dmv"]}: chained ours {d["ours_chain_us"]:.1f} us vs MLX {d["mlx_chain_us"]:.1f}; '
              f'independent {d["ours_us"]:.1f} vs {d["mlx_us"]:.1f}')
PY
for size in 8b 1b; do
  [ -f $MODELS/llama-$size/model.safetensors ] || python3 xtask/bench/gpu/random_llama.py $MODELS/llama-$size $size 512 >/dev/null
done
[ -n "${Q4:-}" ] || { grep -q H200 $OUT/gpu.txt && Q4=1 || Q4=0; }
[ "$Q4" = 1 ] && { [ -f $MODELS/llama-8b-q4/config.json ] ||
  timeout 200 python3 xtask/bench/gpu/quantize.py $MODELS/llama-8b $MODELS/llama-8b-q4 4 64 >/dev/null 2>&1; }
for round in $(seq 1 ${ROUNDS:-2}); do
  if [ "$Q4" = 1 ]; then
    M=$MODELS/llama-8b-q4 P=$MODELS/llama-8b/prompt_ids.json
    run engine-8b-q4 $round $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    for v in ${Q4_VARIANTS:-}; do
      run engine_$v-8b-q4 $round env $(variant_env $v) $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    done
    run mlx_lm-8b-q4 $round python3 xtask/bench/mlx_lm_decode.py $M $P 128
  fi
  for m in ${DECODE_MODELS:-8b 1b}; do
    M=$MODELS/llama-$m P=$MODELS/llama-$m/prompt_ids.json
    run engine-$m $round $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    for v in ${VARIANTS:-mlxgemv dmv fdmv_u4 fdmv_u1}; do
      run engine_$v-$m $round env $(variant_env $v) $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    done
    run mlx_lm-$m $round python3 xtask/bench/mlx_lm_decode.py $M $P 128
  done
  if [ "$round" = 1 ] && [ -f .devcache/gpu/parity.tar.xz ]; then
    tar xJf .devcache/gpu/parity.tar.xz -C "$HOME"
    env $(variant_env ${PARITY_VARIANT:-fdmv}) timeout 120 $BIN/parity_gpu "$HOME/parity" > $OUT/parity.jsonl 2>&1 || rc=1
    grep -h summary $OUT/parity.jsonl
  fi
done
exit $rc
