#!/usr/bin/env bash
# Diagnosis of decode on the device (issue 16), after `SIZES="1b 8b" run_qmv.sh 1`, carry [".devcache/cuda/b"]:
# CHECK=1 qmv_check --quick with qmv2 on; BW=1 / BW2=1 qmv_check --bandwidth with qmv2 on / off; then for each of
# MODELS_RUN (default "8b-q4 1b-q4 1b 8b") two rounds of the engine (4-bit: also with qmv2 on; bf16: also with the
# dense fused kernels) and mlx-lm; with Nsight Systems on the machine, kernel and API summaries of 64-token runs.
set -uo pipefail
export MODELS=$HOME/models
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
echo "tools: $(ls /usr/local/cuda/bin 2>&1 | tr '\n' ' ')"; which nsys ncu; ls -d /opt/nvidia/* /usr/local/cuda*/nsight* 2>&1 | head
[ -z "${BW:-}" ] || { MLXENGINE_CUDA_QMV_STREAM=1 timeout 120 $BIN/qmv_check --bandwidth > $OUT/bw.jsonl 2>&1; grep -h ours_gbps $OUT/bw.jsonl | cut -c1-300; }
[ -z "${BW2:-}" ] || { MLXENGINE_CUDA_QMV_STREAM=0 timeout 120 $BIN/qmv_check --bandwidth > $OUT/bw0.jsonl 2>&1; grep -h ours_gbps $OUT/bw0.jsonl | cut -c1-300; }
[ -z "${CHECK:-}" ] || { MLXENGINE_CUDA_QMV_STREAM=1 timeout 200 $BIN/qmv_check --quick > $OUT/qmv.jsonl 2>&1; grep -h summary $OUT/qmv.jsonl; }
run() {  # NAME CMD...
  local name=$1; shift
  echo "== $name"; timeout 200 "$@" 2>&1 | grep -E 'DIAG|^\{' | cut -c1-400
}
for m in ${MODELS_RUN:-8b-q4 1b-q4 1b 8b}; do
  M=$MODELS/llama-$m P=$MODELS/llama-${m%-q4}/prompt_ids.json
  [ -f $M/config.json ] || python3 xtask/bench/gpu/quantize.py $MODELS/llama-${m%-q4} $M 4 64 >/dev/null 2>&1
  for r in 1 2; do
    run engine-$m $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    case $m in *-q4) run engine_qmv2-$m env MLXENGINE_CUDA_QMV_STREAM=1 $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128;; esac
    case $m in 1b|8b) run engine_dense-$m env MLXENGINE_CUDA_QMV_DENSE=1 $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128;; esac
    run mlx_lm-$m python3 xtask/bench/mlx_lm_decode.py $M $P 128
  done
done
NSYS=$(which nsys 2>/dev/null || ls /usr/local/cuda/bin/nsys 2>/dev/null || ls /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -n "$NSYS" ]; then
  for m in 8b-q4 1b; do
    M=$MODELS/llama-$m P=$MODELS/llama-${m%-q4}/prompt_ids.json
    timeout 200 $NSYS profile -o /tmp/prof-$m -t cuda --force-overwrite true $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 64 > /dev/null 2>&1
    $NSYS stats -q --report cuda_gpu_kern_sum --format csv /tmp/prof-$m.nsys-rep > $OUT/kern-$m.csv 2>&1
    $NSYS stats -q --report cuda_gpu_trace --format csv /tmp/prof-$m.nsys-rep 2>/dev/null | tail -4000 > $OUT/trace-$m.csv
    $NSYS stats -q --report cuda_api_sum --format csv /tmp/prof-$m.nsys-rep > $OUT/api-$m.csv 2>&1
  done
fi
