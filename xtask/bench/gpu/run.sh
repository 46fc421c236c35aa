#!/usr/bin/env bash
# Second device call of the GPU decode bench (see ../../../docs and the shared device recipe):
# joins libmlx (CUDA), installs MLX Python + mlx-lm beside it, makes random Llama weights at real
# shapes, and runs the engine and mlx-lm on the same weights and prompt, writing JSON to $OUT.
set -uo pipefail
A=.devcache/cuda/a B=.devcache/cuda/b RT=$PWD/.devcache/rt
python3 -m pip install -q --no-deps $B/zstandard-*.whl
mkdir -p $RT/lib && cat $A/libmlx.zst.aa $B/libmlx.zst.ab | python3 -c "import sys,zstandard; zstandard.ZstdDecompressor().copy_stream(sys.stdin.buffer, open('$RT/lib/libmlx.so','wb'))"
tar xzf $B/include.tgz -C $RT
N=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
export LD_LIBRARY_PATH=$RT/lib:$N/cu13/lib:$N/cudnn/lib:$N/nccl/lib:$PWD/$A/mlx_cuda_13.libs
python3 -m pip install -q --no-deps --target .devcache/py $B/mlx-0.32.4-*.whl $B/mlx_lm-*.whl
export PYTHONPATH=$PWD/.devcache/py
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import mlx.core as mx; print(mx.default_device(), mx.__version__)" 2>&1 | tail -2
chmod +x $B/bench_decode
for size in ${SIZES:-1b 8b}; do
  M=.devcache/llama-$size
  python3 xtask/bench/gpu/random_llama.py $M $size 512 || continue
  for round in 1 2; do
    $B/bench_decode $M --dtype native --prompt-ids $M/prompt_ids.json --tokens 128 | tee -a $OUT/engine-$size.jsonl
    python3 xtask/bench/mlx_lm_decode.py $M $M/prompt_ids.json 128 2>&1 | tail -1 | tee -a $OUT/mlx_lm-$size.jsonl
  done
  if [ -n "${QUANT:-}" ]; then
    # The same weights as MLX 4-bit (group 64): engine and mlx-lm again.
    python3 xtask/bench/gpu/quantize.py $M $M-q4 4 64 && for round in 1 2; do
      $B/bench_decode $M-q4 --dtype native --prompt-ids $M/prompt_ids.json --tokens 128 | tee -a $OUT/engine-$size-q4.jsonl
      python3 xtask/bench/mlx_lm_decode.py $M-q4 $M/prompt_ids.json 128 2>&1 | tail -1 | tee -a $OUT/mlx_lm-$size-q4.jsonl
    done
    rm -rf $M-q4
  fi
  rm -rf $M
done
