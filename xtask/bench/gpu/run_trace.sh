#!/usr/bin/env bash
# One device call that checks and measures opt-in kernel variants and profiles decode (issue 16), carry
# [".devcache/gpu"] (stage_kernels.sh; H100/H200), or carry [".devcache/cuda/b"] after `SIZES="1b 8b" run_qmv.sh 1`
# on a warm machine. Makes the random Llama-3.2-1B- and Llama-3.1-8B-shaped weights after the checks where they are missing.
#   1. parity: attn_check (packed q/k/v cases included) -> $OUT/attn.jsonl, qmv_check --quick -> $OUT/qmv.jsonl,
#      parity_gpu over the parity fixtures (staged in half a) -> $OUT/parity.jsonl;
#   2. decode (random weights, 512-token prompt, 128 greedy tokens) -> $OUT/decode.jsonl: 8B 4-bit (group 64)
#      and 1B bf16 twice, 8B bf16 once — the engine as shipped, its variants (below) and mlx-lm;
#   3. kernel traces (libkernel_trace.so, CUPTI): the last 250 ms of GPU work of one run each, kernels (by name
#      and grid) vs idle gaps -> $OUT/traces.jsonl, each line with its run's name (one file: a call brings back
#      only so many);
#   4. qmv_check --bandwidth -> $OUT/bw.jsonl.
# Variants (env settings run beside the engine as shipped; Q4_VARIANTS / DENSE_VARIANTS pick them, default
# "deq0 threads128 prefetch" for the 4-bit model, none for the dense ones): nopack = MLXENGINE_CUDA_PACK=0, normpass =
# MLXENGINE_CUDA_QMV_NORM=pass, deq0 = MLXENGINE_CUDA_QMV_DEQ=0, threads128 = MLXENGINE_CUDA_QMV_THREADS=128,
# prefetch = MLXENGINE_CUDA_QMV_PREFETCH=1, rows2 / rows8 = MLXENGINE_CUDA_QMV_ROWS=2 / 8
# (rows a block: the grid's waves over the SMs), attn0 = MLXENGINE_CUDA_ATTN=0 (MLX's attention ops), slots32 /
# slots128 = MLXENGINE_CUDA_ATTN_SLOTS=32 / 128 (the fewest slots a split of the decode attention, default 64),
# rows8t128 = 8 rows a block of 128 threads, pdl0 / pdl1 = MLXENGINE_CUDA_PDL=0 / 1 (decode chains never / always), pdlplain = chains with ordinary edges (their host cost alone), pdl1rows2 = chains over 2 rows a block, e0110 (any mask) = chains with programmatic edges where the mask has a 1 (edge i: stage i to i+1), addnorm0 = MLXENGINE_CUDA_ADD_NORM=0 (MLX's add and rms_norm), ldcs0 = MLXENGINE_CUDA_QMV_LDCS=0 (packed weights loaded through the read-only path, not evict-first), dmv* / fdmv* / base* =
# our dense matvec / and the fused dense layers (dmv_env.sh, run_dmv.sh's variants); add yours to variant_env. DECODE_MODELS (default "8b-q4 1b") picks the models of each round (8B bf16 runs once after, unless DENSE8B=0);
# TRACE_VARIANT_LIST the traced variants (default: all the model's), TRACE_MLX=0 skips mlx-lm's trace, BW=0 step 4,
# CHECKS (default "attn qmv parity") the checks of step 1. TRACE_MODELS (default "8b-q4 1b") picks the traced models; TRACE_VARIANTS=0 traces the
# engine as shipped alone (no variants, no mlx-lm); ROUNDS (default "1 2") the decode rounds. Most important first: a call cut at its limit keeps what came before.
# Exits 1 on a parity failure.
set -uo pipefail
export MODELS=$HOME/models
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
TRACE=$PWD/.devcache/gpu/libkernel_trace.so
[ -f "$TRACE" ] || TRACE=$PWD/.devcache/cuda/b/libkernel_trace.so
PARITY=.devcache/gpu/parity.tar.xz
[ -f $PARITY ] || PARITY=$HOME/stage_a/parity.tar.xz
# Kept for run_diffusion.sh, a call after this one on the same machine (it carries half b no longer).
[ -f "$TRACE" ] && cp "$TRACE" "$HOME/"
rc=0
CHECKS=${CHECKS-attn qmv parity}
touch $OUT/attn.jsonl $OUT/qmv.jsonl $OUT/parity.jsonl
[[ " $CHECKS " != *" attn "* ]] || timeout 120 $BIN/attn_check > $OUT/attn.jsonl 2>&1 || rc=1
[[ " $CHECKS " != *" qmv "* ]] || timeout 150 $BIN/qmv_check --quick > $OUT/qmv.jsonl 2>&1 || rc=1
# The parity fixtures on the GPU (fused kernels and packed projections on real checkpoint layouts).
if [[ " $CHECKS " == *" parity "* ]] && [ -f "$PARITY" ] && [ -x "$BIN/parity_gpu" ]; then
  tar xJf "$PARITY" -C "$HOME"
  timeout 120 $BIN/parity_gpu "$HOME/parity" > $OUT/parity.jsonl 2>&1 || rc=1
fi
grep -h summary $OUT/attn.jsonl $OUT/qmv.jsonl $OUT/parity.jsonl
grep -h packed $OUT/attn.jsonl
# Only the sizes this call decodes or traces (a random 8B takes most of a minute to write).
sizes=" ${DECODE_MODELS-8b-q4 1b} ${TRACE_MODELS-8b-q4 1b} "
[ "${DENSE8B:-1}" = 0 ] || sizes+=" 8b "
for size in 1b 8b; do
  [[ $sizes == *" $size"[\ -]* ]] || continue
  [ -f $MODELS/llama-$size/model.safetensors ] || python3 xtask/bench/gpu/random_llama.py $MODELS/llama-$size $size 512 >/dev/null
done
source xtask/bench/gpu/dmv_env.sh
variant_env() {  # VARIANT -> env assignments
  case $1 in
    nopack) echo MLXENGINE_CUDA_PACK=0 ;;
    normpass) echo MLXENGINE_CUDA_QMV_NORM=pass ;;
    deq0) echo MLXENGINE_CUDA_QMV_DEQ=0 ;;
    ldcs0) echo MLXENGINE_CUDA_QMV_LDCS=0 ;;
    prefetch) echo MLXENGINE_CUDA_QMV_PREFETCH=1 ;;
    threads128) echo MLXENGINE_CUDA_QMV_THREADS=128 ;;
    rows2) echo MLXENGINE_CUDA_QMV_ROWS=2 ;;
    rows8) echo MLXENGINE_CUDA_QMV_ROWS=8 ;;
    attn0) echo MLXENGINE_CUDA_ATTN=0 ;;
    slots32) echo MLXENGINE_CUDA_ATTN_SLOTS=32 ;;
    slots128) echo MLXENGINE_CUDA_ATTN_SLOTS=128 ;;
    rows8t128) echo MLXENGINE_CUDA_QMV_ROWS=8 MLXENGINE_CUDA_QMV_THREADS=128 ;;
    addnorm0) echo MLXENGINE_CUDA_ADD_NORM=0 ;;
    pdl0) echo MLXENGINE_CUDA_PDL=0 ;;
    pdl1) echo MLXENGINE_CUDA_PDL=1 ;;
    pdlplain) echo MLXENGINE_CUDA_PDL=1 MLXENGINE_CUDA_PDL_EDGES=plain ;;
    pdl1rows2) echo MLXENGINE_CUDA_PDL=1 MLXENGINE_CUDA_QMV_ROWS=2 ;;
    e[01]*) echo MLXENGINE_CUDA_PDL=1 MLXENGINE_CUDA_PDL_EDGES=${1#e} ;;
    dmv*|fdmv*|base*) dmv_env $1 ;;
    *) echo "MLXENGINE_UNKNOWN_VARIANT=$1" ;;
  esac
}
variants_of() { case $1 in *-q4) echo ${Q4_VARIANTS-deq0 threads128 prefetch} ;; *) echo ${DENSE_VARIANTS-} ;; esac; }
decode() {  # MODEL ROUND: the engine, its variants, mlx-lm
  local m=$1 round=$2 M=$MODELS/llama-$1 P=$MODELS/llama-${1%-q4}/prompt_ids.json
  run engine-$m $round $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
  for v in $(variants_of $m); do
    run engine_$v-$m $round env $(variant_env $v) $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
  done
  run mlx_lm-$m $round python3 xtask/bench/mlx_lm_decode.py $M $P 128
}
[[ $sizes != *" 8b-q4 "* ]] || [ -f $MODELS/llama-8b-q4/config.json ] || timeout 200 python3 xtask/bench/gpu/quantize.py $MODELS/llama-8b $MODELS/llama-8b-q4 4 64 >/dev/null 2>&1
for round in ${ROUNDS-1 2}; do
  for m in ${DECODE_MODELS-8b-q4 1b}; do decode $m $round; done
done
[ "${DENSE8B:-1}" = 0 ] || decode 8b 1
if [ -f "$TRACE" ]; then
  tr() {  # NAME CMD...: one traced run
    local name=$1; shift
    rm -f /tmp/ktrace.jsonl
    KTRACE_OUT=/tmp/ktrace.jsonl CUDA_INJECTION64_PATH=$TRACE run traced_$name 1 "$@"
    sed "s/^{/{\"run\":\"$name\",/" /tmp/ktrace.jsonl >> $OUT/traces.jsonl
  }
  for m in ${TRACE_MODELS-8b-q4 1b}; do
    M=$MODELS/llama-$m P=$MODELS/llama-${m%-q4}/prompt_ids.json
    tr engine-$m $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    [ "${TRACE_VARIANTS:-1}" = 0 ] || for v in ${TRACE_VARIANT_LIST-$(variants_of $m)}; do
      tr engine_$v-$m env $(variant_env $v) $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    done
    [ "${TRACE_VARIANTS:-1}" = 0 ] || [ "${TRACE_MLX:-1}" = 0 ] || tr mlx_lm-$m python3 xtask/bench/mlx_lm_decode.py $M $P 128
  done
  grep -h '"summary"' $OUT/traces.jsonl
fi
[ "${BW:-1}" = 0 ] || timeout 60 $BIN/qmv_check --bandwidth > $OUT/bw.jsonl 2>&1
# BW_PROBES="nox stream": the same with MLXENGINE_CUDA_QMV_PROBE (wrong results; what bounds the matvec).
for p in ${BW_PROBES-}; do MLXENGINE_CUDA_QMV_PROBE=$p timeout 60 $BIN/qmv_check --bandwidth 2>&1 | grep '"bandwidth"' >> $OUT/bw.jsonl; done
exit $rc
