#!/usr/bin/env bash
# One device call for the dense matvec behind fast::linear (MLXENGINE_CUDA_DMV; issue 16's 8B bfloat16 roofline),
# carry [".devcache/gpu"] (stage_kernels.sh; H100/H200):
#   1. `qmv_check --dense` for each block shape of DMV_CONFIGS (RPW,U,THREADS: rows a warp, 16-byte chunks in flight a
#      row, threads a block) -> $OUT/dmv.jsonl: errors at 1 and 4 rows, bandwidth at one row against MLX's gemv, and
#      the fused dense kernels' errors (fdmv, MLXENGINE_CUDA_QMV_DENSE=1) on a layer of each family;
#   2. the shape with the shortest 8B decode step (32 × (q/k/v + o + gate/up + down) + LM head, from step 1) picked;
#   3. decode (random weights, 512-token prompt, 128 greedy tokens) -> $OUT/decode.jsonl: 8B and 1B bfloat16, the engine
#      as shipped (MLX's gemv), with the dense matvec at the picked shape, with it and the fused dense layers (fdmv: norm
#      + q/k/v, o + residual, norm + gate/up + SwiGLU, down + residual), and mlx-lm; 8B first, ROUNDS (default 2) rounds;
#   4. parity_gpu over the parity fixtures with both on (after round 1) -> $OUT/parity.jsonl.
# Exits 1 on an error or parity failure.
set -uo pipefail
export MODELS=$HOME/models
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
rc=0
for cfg in ${DMV_CONFIGS-1,4,256 1,8,256 2,4,256 1,4,128 2,2,128 1,2,256}; do
  IFS=, read -r rpw u th <<< "$cfg"
  MLXENGINE_CUDA_DMV=1 MLXENGINE_CUDA_QMV_DENSE=1 MLXENGINE_CUDA_DMV_RPW=$rpw MLXENGINE_CUDA_DMV_U=$u MLXENGINE_CUDA_DMV_THREADS=$th \
    timeout 90 $BIN/qmv_check --dense >> $OUT/dmv.jsonl 2>&1 || rc=1
done
BEST=$(python3 - "$OUT/dmv.jsonl" <<'PY'
import json, sys, collections
use = {"qkv": 32, "o": 32, "gate_up": 32, "down": 32, "lm_head": 1}
step, mlx = collections.defaultdict(float), collections.defaultdict(float)
for line in open(sys.argv[1]):
    if not line.startswith("{"): continue
    d = json.loads(line)
    if "dmv" in d:
        key = f'{d["rpw"] or 1},{d["u"] or 4},{d["threads"] or 256}'
        step[key] += use[d["dmv"]] * d["ours_us"]
        mlx[key] += use[d["dmv"]] * d["mlx_us"]
for k in sorted(step, key=step.get):
    print(f"{k}: ours {step[k]:.0f} us a step, MLX's gemv {mlx[k]:.0f}", file=sys.stderr)
print(min(step, key=step.get) if step else "1,4,256")
PY
)
grep -h summary $OUT/dmv.jsonl
IFS=, read -r rpw u th <<< "$BEST"
echo "picked RPW=$rpw U=$u THREADS=$th"
DMV="MLXENGINE_CUDA_DMV=1 MLXENGINE_CUDA_DMV_RPW=$rpw MLXENGINE_CUDA_DMV_U=$u MLXENGINE_CUDA_DMV_THREADS=$th"
for size in 8b 1b; do
  [ -f $MODELS/llama-$size/model.safetensors ] || python3 xtask/bench/gpu/random_llama.py $MODELS/llama-$size $size 512 >/dev/null
done
# Q4=1 adds the 8B MLX 4-bit model (group 64), engine and mlx-lm, to each round; by default on an H200 alone (issue
# 16's 400 tok/s there).
[ -n "${Q4:-}" ] || { grep -q H200 $OUT/gpu.txt && Q4=1 || Q4=0; }
[ "$Q4" = 1 ] && { [ -f $MODELS/llama-8b-q4/config.json ] ||
  timeout 200 python3 xtask/bench/gpu/quantize.py $MODELS/llama-8b $MODELS/llama-8b-q4 4 64 >/dev/null 2>&1; }
run() {  # NAME ROUND CMD...
  local name=$1 round=$2 line; shift 2
  line=$(timeout 200 "$@" 2>/tmp/dmv.err | grep '^{' | tail -1)
  [ -n "$line" ] || tail -3 /tmp/dmv.err
  echo "{\"run\": \"$name\", \"round\": $round, \"result\": ${line:-null}}" | tee -a $OUT/decode.jsonl
}
for round in $(seq 1 ${ROUNDS:-2}); do
  if [ "$Q4" = 1 ]; then
    M=$MODELS/llama-8b-q4 P=$MODELS/llama-8b/prompt_ids.json
    run engine-8b-q4 $round $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    run mlx_lm-8b-q4 $round python3 xtask/bench/mlx_lm_decode.py $M $P 128
  fi
  for m in 8b 1b; do
    M=$MODELS/llama-$m P=$MODELS/llama-$m/prompt_ids.json
    run engine-$m $round $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    run engine_dmv-$m $round env $DMV $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    run engine_fdmv-$m $round env $DMV MLXENGINE_CUDA_QMV_DENSE=1 $BIN/bench_decode $M --dtype native --prompt-ids $P \
      --tokens 128
    run mlx_lm-$m $round python3 xtask/bench/mlx_lm_decode.py $M $P 128
  done
  if [ "$round" = 1 ] && [ -f .devcache/gpu/parity.tar.xz ]; then
    tar xJf .devcache/gpu/parity.tar.xz -C "$HOME"
    env $DMV MLXENGINE_CUDA_QMV_DENSE=1 timeout 120 $BIN/parity_gpu "$HOME/parity" > $OUT/parity.jsonl 2>&1 || rc=1
    grep -h summary $OUT/parity.jsonl
  fi
done
exit $rc
