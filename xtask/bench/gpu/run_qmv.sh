#!/usr/bin/env bash
# Device calls for the engine's CUDA quantized matvec (issue 16), after `bash xtask/bench/gpu/stage_kernels.sh` here:
#   call 1, carry [".devcache/cuda/a"]:  bash xtask/bench/gpu/run_qmv.sh 1
#     keeps half a of libmlx in $HOME/stage_a; random Llama-3.2-1B- and Llama-3.1-8B-shaped bf16 weights
#     (torch on the GPU) in $HOME/models;
#   call 2, right after (the machine stays warm ~30 s), carry [".devcache/cuda/b"]:  bash xtask/bench/gpu/run_qmv.sh 2
#     joins libmlx (mlx_env.sh); qmv_check (our kernel vs MLX's quantized_matmul: parity against a float32
#     reference and microseconds per call, every linear shape of Llama-3.2-1B / Llama-3.1-8B / Qwen2.5-7B at
#     batch 1, 4, 32) -> $OUT/qmv.jsonl; then run.sh on the 4-bit copies (SIZES="1b 8b" QUANT=1 NO_BF16=1,
#     best of two: the engine with and without its matvec, and mlx-lm) -> $OUT/decode.jsonl.
# SIZES (default "1b 8b") picks the shapes, QMV_CHECK=0 skips qmv_check, PHASE2_BF16=1 keeps run.sh's bf16 rounds.
set -uo pipefail
export MODELS=$HOME/models
if [ "${1:-2}" = 1 ]; then
  rm -rf "$HOME/stage_a" && cp -r .devcache/cuda/a "$HOME/stage_a"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
  for size in ${SIZES:-1b 8b}; do
    [ -f $MODELS/llama-$size/model.safetensors ] || python3 xtask/bench/gpu/random_llama.py $MODELS/llama-$size $size 512
  done
  ls -la $MODELS/*; df -h $HOME | tail -1
  exit 0
fi
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
[ "${QMV_CHECK:-1}" = 0 ] || MLXENGINE_CUDA_QMV_DENSE=1 timeout 200 $BIN/qmv_check > $OUT/qmv.jsonl 2>&1
[ "${QMV_CHECK:-1}" = 0 ] || python3 - $OUT/qmv.jsonl <<'PY'
import json, sys
for l in open(sys.argv[1]):
    try: r = json.loads(l)
    except ValueError: print(l.rstrip()); continue
    if "family" not in r or (r["dtype"] == "bfloat16" and r["bits"] == 4 and r["group"] == 64):
        print(r if "family" not in r else f'{r["family"]} {r["layer"]} m={r["m"]}: ours {r["ours_us"]:.1f} us ({r["ours_gbps"]:.0f} GB/s, block layout {r["ours_block_us"]:.1f}) mlx {r["mlx_us"]:.1f} us  err {r["ours_rel_err"]:.1e} (mlx {r["mlx_rel_err"]:.1e})')
PY
[ -n "${PHASE2_BF16:-}" ] || export NO_BF16=1
SIZES=${SIZES:-1b 8b} QUANT=1 KEEP=1 bash xtask/bench/gpu/run.sh
