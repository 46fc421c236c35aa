#!/usr/bin/env bash
# Host-overhead call (issue 16), after `SIZES="thin 8b" run_qmv.sh 1`, carry [".devcache/cuda/b"]: the engine and
# mlx-lm on the 4-bit "thin" and 8B models under MLX's CUDA graph settings (MLX_USE_CUDA_GRAPHS,
# MLX_MAX_OPS_PER_BUFFER: kernels per CUDA graph, 100 by default on an H100) -> $OUT/env.jsonl.
set -uo pipefail
export MODELS=$HOME/models
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
run() {  # NAME ENV CMD...
  local name=$1 envs=$2 line; shift 2
  line=$(env $envs timeout 200 "$@" 2>/tmp/e.err | grep '^{' | tail -1)
  [ -n "$line" ] || tail -3 /tmp/e.err
  echo "{\"run\": \"$name\", \"env\": \"$envs\", \"result\": ${line:-null}}" | tee -a $OUT/env.jsonl
}
for size in ${SIZES:-thin 8b}; do
  M=$MODELS/llama-$size
  [ -f $M-q4/config.json ] || python3 xtask/bench/gpu/quantize.py $M $M-q4 4 64 >/dev/null 2>&1
  for round in 1 2; do
    for e in X=1 MLX_USE_CUDA_GRAPHS=0 MLX_MAX_OPS_PER_BUFFER=1000 MLX_MAX_OPS_PER_BUFFER=40; do
      run engine-$size-q4 $e $BIN/bench_decode $M-q4 --dtype native --prompt-ids $M/prompt_ids.json --tokens 128
    done
    for e in X=1 MLX_USE_CUDA_GRAPHS=0 MLX_MAX_OPS_PER_BUFFER=1000; do
      run mlx_lm-$size-q4 $e python3 xtask/bench/mlx_lm_decode.py $M-q4 $M/prompt_ids.json 128
    done
  done
done
