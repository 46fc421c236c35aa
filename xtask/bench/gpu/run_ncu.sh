#!/usr/bin/env bash
# One device call that checks a kernel change, times it against an earlier build and profiles it with Nsight
# Compute (issue 16), carry [".devcache/gpu"] (stage_kernels.sh; H100/H200). An earlier build's bench_decode, xz'd
# into .devcache/gpu/bin/bench_decode_NAME.xz before staging (stage_kernels.sh keeps it), runs as variant "bin:NAME".
#   1. CHECKS (default "attn parity"): attn_check -> $OUT/attn.jsonl, parity_gpu over the parity fixtures ->
#      $OUT/parity.jsonl, "qmv": qmv_check (every quantized shape, dtype, width and group; QMV_CHECK_ARGS=--quick
#      bfloat16 4-bit group 64 alone) -> $OUT/qmv.jsonl; all three under CHECK_VARIANT's environment (dmv_env.sh;
#      default base, as shipped);
#   2. decode (random weights, 512-token prompt, 128 greedy tokens) of DECODE_MODELS (default "8b 1b"; 8b-q4 the
#      8B MLX 4-bit model) as shipped and with each of VARIANTS (dmv_env.sh's names, or bin:NAME; default none),
#      ROUNDS (default 2) rounds -> $OUT/decode.jsonl;
#   3. NCU=1 (default): ncu over a few decode steps of NCU_MODEL (default 8b; 8b-q4 profiles the 4-bit matvecs): a
#      layer's kernels (NCU_KERNELS, default our attention and fused matvecs) with their speed-of-light, occupancy,
#      warp-state and memory sections -> $OUT/ncu.csv, and the instructions of NCU_SRC_COUNT launches of
#      NCU_SRC_KERNEL (default the attention) from launch NCU_SRC_SKIP on, with their stall samples ->
#      $OUT/ncu_src.csv, their launch statistics -> $OUT/ncu_src_details.csv (`--clock-control none`; ncu flushes
#      the caches before each kernel, so times run above a decode's).
# Exits 1 on a check failure.
set -uo pipefail
export MODELS=$HOME/models
source xtask/bench/gpu/mlx_env.sh
source xtask/bench/gpu/dmv_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
rc=0
CHECKS=${CHECKS-attn parity}
CHECK_ENV=$(dmv_env ${CHECK_VARIANT:-base})
if [[ " $CHECKS " == *" attn "* ]]; then
  timeout 120 env $CHECK_ENV $BIN/attn_check > $OUT/attn.jsonl 2>&1 || rc=1
  grep -h '"chain"\|summary' $OUT/attn.jsonl
fi
if [[ " $CHECKS " == *" parity "* ]] && [ -f .devcache/gpu/parity.tar.xz ]; then
  tar xJf .devcache/gpu/parity.tar.xz -C "$HOME"
  timeout 120 env $CHECK_ENV $BIN/parity_gpu "$HOME/parity" > $OUT/parity.jsonl 2>&1 || rc=1
  grep -h summary $OUT/parity.jsonl
fi
if [[ " $CHECKS " == *" qmv "* ]]; then
  timeout 240 env $CHECK_ENV $BIN/qmv_check ${QMV_CHECK_ARGS:-} > $OUT/qmv.jsonl 2>&1 || rc=1
  grep -h summary $OUT/qmv.jsonl || tail -3 $OUT/qmv.jsonl
fi
DECODE_MODELS=${DECODE_MODELS:-8b 1b}
need=" $DECODE_MODELS "
[ "${NCU:-1}" = 1 ] && need="$need ${NCU_MODEL:-8b} "
for size in 8b 1b; do
  [[ $need == *" $size"* ]] || continue
  [ -f $MODELS/llama-$size/model.safetensors ] || python3 xtask/bench/gpu/random_llama.py $MODELS/llama-$size $size 512 >/dev/null
done
[[ $need != *" 8b-q4 "* || -f $MODELS/llama-8b-q4/config.json ]] ||
  timeout 200 python3 xtask/bench/gpu/quantize.py $MODELS/llama-8b $MODELS/llama-8b-q4 4 64 >/dev/null 2>&1
for round in $(seq 1 ${ROUNDS:-2}); do
  for m in $DECODE_MODELS; do
    M=$MODELS/llama-$m P=$MODELS/llama-${m%-q4}/prompt_ids.json
    run engine-$m $round $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
    for v in ${VARIANTS:-}; do
      if [[ $v == bin:* ]]; then
        run engine_${v#bin:}-$m $round $BIN/bench_decode_${v#bin:} $M --dtype native --prompt-ids $P --tokens 128
      else
        run engine_$v-$m $round env $(dmv_env $v) $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 128
      fi
    done
  done
done
NCU_BIN=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
if [ "${NCU:-1}" = 1 ] && [ -n "$NCU_BIN" ]; then
  NCU_MODEL=${NCU_MODEL:-8b}
  M=$MODELS/llama-$NCU_MODEL P=$MODELS/llama-${NCU_MODEL%-q4}/prompt_ids.json
  # Past the first decode steps (each layer launches 4 fused matvecs and 1 attention).
  timeout 240 $NCU_BIN --clock-control none --graph-profiling node -k "regex:${NCU_KERNELS:-mlxe_(attn|fdmv|qmv)}" \
    --launch-skip 400 --launch-count 10 --section SpeedOfLight --section LaunchStats --section Occupancy \
    --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats --csv --page details \
    $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 16 > $OUT/ncu.csv 2> $OUT/ncu.err
  tail -2 $OUT/ncu.err
  timeout 150 $NCU_BIN --clock-control none --graph-profiling node -k "regex:${NCU_SRC_KERNEL:-mlxe_attn}" \
    --launch-skip ${NCU_SRC_SKIP:-80} --launch-count ${NCU_SRC_COUNT:-1} --section SourceCounters \
    --section WarpStateStats --section LaunchStats -o $HOME/ncu_src -f \
    $BIN/bench_decode $M --dtype native --prompt-ids $P --tokens 8 > /dev/null 2> $OUT/ncu_src.err
  tail -2 $OUT/ncu_src.err
  $NCU_BIN --import $HOME/ncu_src.ncu-rep --csv --page source --print-source sass > $OUT/ncu_src.csv 2>> $OUT/ncu_src.err
  $NCU_BIN --import $HOME/ncu_src.ncu-rep --csv --page details > $OUT/ncu_src_details.csv 2>> $OUT/ncu_src.err
fi
exit $rc
