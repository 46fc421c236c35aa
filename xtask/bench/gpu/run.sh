#!/usr/bin/env bash
# GPU decode bench (see ../../../docs and the shared device recipe), the call that carries half b of
# libmlx (`stage_kernels.sh` stages it): joins libmlx (CUDA), installs MLX Python + mlx-lm beside it,
# makes random Llama weights at real shapes (or reuses those in $MODELS, default .devcache), and runs
# the engine and mlx-lm on the same weights and prompt, twice each: $OUT/decode.jsonl, one line a run
# ({"run": "engine-8b-q4", "round": 1, "result": the bench's JSON line or null}), $OUT/gpu.txt.
#   SIZES="1b 8b"  which shapes;  QUANT=1  also an MLX 4-bit (group 64) copy of the same weights, run by
#   the engine with its CUDA kernels (engine-SIZE-q4: the fused decode matvecs), without them
#   (MLXENGINE_CUDA_QMV=0, engine_mlxqmv-…: MLX's ops alone; NO_MLXQMV=1 skips it), with ATTN_AB=1 also without the fused decode
#   attention (MLXENGINE_CUDA_ATTN=0, engine_noattn-…), and by mlx-lm; the bf16 rounds run the engine also
#   without its dense matvecs (MLXENGINE_CUDA_QMV_DENSE=0 MLXENGINE_CUDA_DMV=0, engine_mlxgemv-…: MLX's gemv and ops;
#   NO_MLXGEMV=1 skips it);  NO_BF16=1  skips the bf16 rounds;  KEEP=1  keeps the models.
# Half a travels in an earlier call (it does not fit beside b): that call copies it to $HOME/stage_a
# (`run_qmv.sh 1`), and this one (mlx_env.sh) copies it back while the machine is still warm.
set -uo pipefail
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/gpu.txt
python3 -c "import mlx.core as mx; print(mx.default_device(), mx.__version__)" 2>&1 | tail -2
MODELS=${MODELS:-.devcache}
# bench NAME ROUND CMD...: CMD's last JSON line (or null) -> $OUT/decode.jsonl
bench() {
  local name=$1 round=$2 line; shift 2
  line=$(timeout 300 "$@" 2>/tmp/bench.err | grep '^{' | tail -1)
  [ -n "$line" ] || tail -3 /tmp/bench.err
  echo "{\"run\": \"$name\", \"round\": $round, \"result\": ${line:-null}}" | tee -a $OUT/decode.jsonl
}
for size in ${SIZES:-1b 8b}; do
  M=$MODELS/llama-$size
  [ -f $M/model.safetensors ] || python3 xtask/bench/gpu/random_llama.py $M $size 512 || continue
  [ -n "${NO_BF16:-}" ] || for round in 1 2; do
    bench engine-$size $round $BIN/bench_decode $M --dtype native --prompt-ids $M/prompt_ids.json --tokens 128
    [ -n "${NO_MLXGEMV:-}" ] || bench engine_mlxgemv-$size $round env MLXENGINE_CUDA_QMV_DENSE=0 MLXENGINE_CUDA_DMV=0 \
      $BIN/bench_decode $M --dtype native --prompt-ids $M/prompt_ids.json --tokens 128
    [ -z "${ATTN_AB:-}" ] || bench engine_noattn-$size $round env MLXENGINE_CUDA_ATTN=0 \
      $BIN/bench_decode $M --dtype native --prompt-ids $M/prompt_ids.json --tokens 128
    bench mlx_lm-$size $round python3 xtask/bench/mlx_lm_decode.py $M $M/prompt_ids.json 128
  done
  if [ -n "${QUANT:-}" ]; then
    # The same weights as MLX 4-bit (group 64): the engine with and without its CUDA matvec, and mlx-lm.
    [ -f $M-q4/config.json ] || python3 xtask/bench/gpu/quantize.py $M $M-q4 4 64
    for round in 1 2; do
      bench engine-$size-q4 $round $BIN/bench_decode $M-q4 --dtype native --prompt-ids $M/prompt_ids.json --tokens 128
      [ -n "${NO_MLXQMV:-}" ] || bench engine_mlxqmv-$size-q4 $round env MLXENGINE_CUDA_QMV=0 \
        $BIN/bench_decode $M-q4 --dtype native --prompt-ids $M/prompt_ids.json --tokens 128
      [ -z "${ATTN_AB:-}" ] || bench engine_noattn-$size-q4 $round env MLXENGINE_CUDA_ATTN=0 \
        $BIN/bench_decode $M-q4 --dtype native --prompt-ids $M/prompt_ids.json --tokens 128
      bench mlx_lm-$size-q4 $round python3 xtask/bench/mlx_lm_decode.py $M-q4 $M/prompt_ids.json 128
    done
    [ -n "${KEEP:-}" ] || rm -rf $M-q4
  fi
  [ -n "${KEEP:-}" ] || rm -rf $M
done
