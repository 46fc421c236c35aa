#!/usr/bin/env bash
# GPU VLM bench, two device calls (shared device recipe, /work/shared/device/README.md):
#   call 1, carry [".devcache/cuda/a"]:  bash xtask/bench/gpu/run_vlm.sh 1
#     keeps half a of libmlx in $HOME/stage_a and writes the random Qwen2.5-VL-3B-shaped bf16
#     checkpoint ($HOME/qwen25vl-3b, torch on the GPU) and the 448x448 image;
#   call 2, right after, carry [".devcache/cuda/b", ".devcache/vlm"]:  bash xtask/bench/gpu/run_vlm.sh 2
#     joins libmlx (CUDA), installs MLX Python + mlx-lm + mlx-vlm beside it, and runs the engine
#     (bench_vlm, --dtype native) and mlx-vlm (bfloat16) twice each on the same checkpoint, image
#     and prompt, 64 greedy tokens, writing JSON lines to $OUT.
# Staged here: stage-mlx-cuda-native.sh .devcache/cuda; .devcache/vlm holds the mlx / mlx_lm /
# mlx_vlm wheels, include.tgz (the CUDA wheel's mlx/include) and bench_vlm.gz (the example built
# with --features engine-mlx/cuda against .devcache/cuda/sdk/mlx).
set -uo pipefail
M=$HOME/qwen25vl-3b IMG=$HOME/vlm-image.png FX=crates/engine-vlm/tests/fixtures/qwen2.5-vl
make_inputs() {
  [ -f $M/model.safetensors ] || python3 xtask/bench/gpu/make_qwen25vl.py $M $FX
  [ -f $IMG ] || python3 -c "import sys, numpy as np; from PIL import Image; Image.fromarray(np.random.default_rng(0).integers(0, 255, (448, 448, 3), dtype=np.uint8)).save(sys.argv[1])" $IMG
}
if [ "${1:-2}" = 1 ]; then
  rm -rf "$HOME/stage_a" && cp -r .devcache/cuda/a "$HOME/stage_a"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
  python3 -c "import PIL, transformers, torch; print('pillow', PIL.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
  time make_inputs
  ls -la $M $IMG
  df -h $HOME | tail -1
  exit 0
fi
A=.devcache/cuda/a B=.devcache/cuda/b V=.devcache/vlm RT=$PWD/.devcache/rt
[ -f $A/libmlx.zst.aa ] || { mkdir -p .devcache/cuda && rm -rf $A && cp -r "$HOME/stage_a" $A; }
python3 -m pip install -q --no-deps $B/zstandard-*.whl
mkdir -p $RT/lib && cat $A/libmlx.zst.aa $B/libmlx.zst.ab | python3 -c "import sys,zstandard; zstandard.ZstdDecompressor().copy_stream(sys.stdin.buffer, open('$RT/lib/libmlx.so','wb'))"
tar xzf $V/include.tgz -C $RT
N=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
export LD_LIBRARY_PATH=$RT/lib:$N/cu13/lib:$N/cudnn/lib:$N/nccl/lib:$PWD/$A/mlx_cuda_13.libs
ldd $RT/lib/libmlx.so | grep 'not found'
python3 -m pip install -q --no-deps --target .devcache/py $V/mlx-0.32.4-*.whl $V/mlx_lm-*.whl $V/mlx_vlm-*.whl
export PYTHONPATH=$PWD/.devcache/py
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import mlx.core as mx; print(mx.default_device(), mx.__version__)" 2>&1 | tail -2
python3 -c "import gzip,shutil; shutil.copyfileobj(gzip.open('$V/bench_vlm.gz'), open('.devcache/bench_vlm','wb'))" && chmod +x .devcache/bench_vlm
make_inputs
P="Describe this image."
for round in 1 2; do
  timeout 200 .devcache/bench_vlm $M $IMG "$P" 64 --dtype native 2>$OUT/engine-$round.err | tee -a $OUT/engine.jsonl
  tail -3 $OUT/engine-$round.err
  timeout 200 python3 xtask/bench/mlx_vlm_generate.py $M $IMG "$P" 64 bfloat16 2>$OUT/mlx_vlm-$round.err | tail -1 | tee -a $OUT/mlx_vlm.jsonl
  tail -3 $OUT/mlx_vlm-$round.err
done
