#!/usr/bin/env bash
# Tuning call for the CUDA decode kernels (issue 16), after `run_qmv.sh 1` (SIZES="thin" or more) in the call
# before, carry [".devcache/cuda/b"]:
#   - qmv_check --bandwidth (8B shapes at one row, weights cycled past the L2 cache) for each rows-per-block /
#     threads-per-block setting in ROWS_SET x THREADS_SET -> $OUT/bw.jsonl;
#   - the "thin" model (8B's depth and heads, tiny matrices: a decode step is per-op cost alone), bf16 and 4-bit,
#     engine (fused kernels), engine with MLX's ops and mlx-lm -> $OUT/decode.jsonl.
set -uo pipefail
export MODELS=$HOME/models
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
for rows in ${ROWS_SET:-2 4 8}; do
  for threads in ${THREADS_SET:-64 128 256}; do
    MLXENGINE_CUDA_QMV_DENSE=1 MLXENGINE_CUDA_QMV_ROWS=$rows MLXENGINE_CUDA_QMV_THREADS=$threads timeout 90 $BIN/qmv_check --bandwidth \
      2>&1 | tee -a $OUT/bw.jsonl | python3 -c "
import json, sys
for l in sys.stdin:
    try: r = json.loads(l)
    except ValueError: print(l.rstrip()); continue
    if 'ours_us' not in r: print(r); continue
    print(f'rows={r.get(\"rows_env\")} threads={r.get(\"threads_env\")} {\"dense \" if \"bandwidth_dense\" in r else \"\"}{r[\"layer\"]}: ours {r[\"ours_us\"]:.1f} us {r[\"ours_gbps\"]:.0f} GB/s, mlx {r[\"mlx_us\"]:.1f} us {r[\"mlx_gbps\"]:.0f} GB/s')"
  done
done
[ "${DECODE:-1}" = 0 ] || SIZES=${SIZES:-thin} QUANT=1 KEEP=1 bash xtask/bench/gpu/run.sh
