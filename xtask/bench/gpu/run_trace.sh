#!/usr/bin/env bash
# One device call that measures a kernel change and profiles decode (issue 16), after `SIZES="1b 8b" run_qmv.sh 1`
# on a warm machine, carry [".devcache/cuda/b"]:
#   1. parity: qmv_check --quick with MLXENGINE_CUDA_QMV_TC=1 (the tensor-core matvec) -> $OUT/qmv_tc.jsonl;
#   2. decode, best of two, 8B and 1B 4-bit (group 64): the engine, the engine with the tensor-core matvec
#      (engine_tc-…), mlx-lm; 1B bf16: the engine and mlx-lm -> $OUT/decode.jsonl;
#   3. kernel traces (libkernel_trace.so, CUPTI): the last 250 ms of GPU work of one run each — where a decode step's
#      time goes, kernels vs idle gaps -> $OUT/trace-NAME.jsonl;
#   4. qmv_check --bandwidth with and without the tensor-core matvec -> $OUT/bw.jsonl, $OUT/bw_tc.jsonl.
# Exits 1 on a parity failure. VARIANTS (default "tc") names the env variants run beside the default engine:
# tc -> MLXENGINE_CUDA_QMV_TC=1.
set -uo pipefail
export MODELS=$HOME/models
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
TRACE=$PWD/.devcache/cuda/b/libkernel_trace.so
rc=0
MLXENGINE_CUDA_QMV_TC=1 timeout 150 $BIN/qmv_check --quick > $OUT/qmv_tc.jsonl 2>&1 || rc=1
grep -h summary $OUT/qmv_tc.jsonl
variant_env() {  # VARIANT -> env assignments
  case $1 in
    tc) echo MLXENGINE_CUDA_QMV_TC=1 ;;
    *) echo "MLXENGINE_UNKNOWN_VARIANT=$1" ;;
  esac
}
run() {  # NAME ROUND CMD...
  local name=$1 round=$2 line; shift 2
  line=$(timeout 200 "$@" 2>/tmp/trace.err | grep '^{' | tail -1)
  [ -n "$line" ] || tail -3 /tmp/trace.err
  echo "{\"run\": \"$name\", \"round\": $round, \"result\": ${line:-null}}" | tee -a $OUT/decode.jsonl
}
for m in 8b 1b; do
  [ -f $MODELS/llama-$m-q4/config.json ] || timeout 200 python3 xtask/bench/gpu/quantize.py $MODELS/llama-$m $MODELS/llama-$m-q4 4 64 >/dev/null 2>&1
done
for round in 1 2; do
  for m in 8b-q4 1b-q4 1b; do
    M=$MODELS/llama-$m P=$MODELS/llama-${m%-q4}/prompt_ids.json
    run engine-$m $round $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    case $m in *-q4) for v in ${VARIANTS:-tc}; do
      run engine_$v-$m $round env $(variant_env $v) $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    done ;; esac
    run mlx_lm-$m $round python3 xtask/bench/mlx_lm_decode.py $M $P 128
  done
done
if [ -f "$TRACE" ]; then
  for m in 8b-q4 1b; do
    M=$MODELS/llama-$m P=$MODELS/llama-${m%-q4}/prompt_ids.json
    KTRACE_OUT=$OUT/trace-engine-$m.jsonl CUDA_INJECTION64_PATH=$TRACE \
      run traced_engine-$m 1 $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    case $m in *-q4) for v in ${VARIANTS:-tc}; do
      KTRACE_OUT=$OUT/trace-engine_$v-$m.jsonl CUDA_INJECTION64_PATH=$TRACE \
        run traced_engine_$v-$m 1 env $(variant_env $v) $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    done ;; esac
    KTRACE_OUT=$OUT/trace-mlx_lm-$m.jsonl CUDA_INJECTION64_PATH=$TRACE \
      run traced_mlx_lm-$m 1 python3 xtask/bench/mlx_lm_decode.py $M $P 128
  done
  grep -h '"summary"' $OUT/trace-*.jsonl
fi
timeout 90 $BIN/qmv_check --bandwidth > $OUT/bw.jsonl 2>&1
MLXENGINE_CUDA_QMV_TC=1 timeout 90 $BIN/qmv_check --bandwidth > $OUT/bw_tc.jsonl 2>&1
exit $rc
