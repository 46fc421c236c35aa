#!/usr/bin/env bash
# GPU VLM bench, two device calls (shared device recipe, /work/shared/device/README.md):
#   call 1, carry [".devcache/cuda/a"]:  bash xtask/bench/gpu/run_vlm.sh 1
#     keeps half a of libmlx in $HOME/stage_a and writes the random Qwen2.5-VL-3B-shaped bf16
#     checkpoint ($HOME/qwen25vl-3b, torch on the GPU) and the 448x448 image;
#   call 2, right after, carry [".devcache/cuda/b", ".devcache/vlm"]:  bash xtask/bench/gpu/run_vlm.sh 2
#     joins libmlx (CUDA), installs MLX Python + mlx-lm + mlx-vlm beside it, runs diag_vlm.py (where
#     mlx-vlm's Qwen2.5-VL dies on CUDA), then the engine (bench_vlm, --dtype native) and mlx-vlm
#     (bfloat16; with --dedupe-windows, and unpatched with MLX_CUDA_USE_CUDNN_SDPA=0) twice each on
#     the same checkpoint, image and prompt, 64 greedy tokens, and unpatched mlx-vlm once more (it
#     is expected to die with SIGFPE; faulthandler prints its stack). If no mlx-vlm run succeeds,
#     the same on a Qwen2-VL-2B-shaped checkpoint (a fallback not exercised yet). $OUT:
#     results.jsonl (one line per run), diag.jsonl, log.txt (every stderr), gpu.txt.
# Staged here: stage-mlx-cuda-native.sh .devcache/cuda; .devcache/vlm/payload.tar.xz holds py/ (the
# mlx 0.32.4 cp312 manylinux, mlx_lm 0.32.2 and mlx_vlm 0.7.10 wheels unzipped: the device venv has
# their other imports), include/ (the CUDA wheel's mlx/include, CCCL included, for NVRTC) and
# bench_vlm (the engine-vlm example built with engine-mlx/cuda against .devcache/cuda/sdk/mlx, stripped); xz, since half b
# plus the work tree leave ~10 MB of the 64 MiB a call carries.
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
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" $V/payload.tar.xz .devcache/payload
rm -rf $RT/include && mv .devcache/payload/include $RT/
N=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
export LD_LIBRARY_PATH=$RT/lib:$N/cu13/lib:$N/cudnn/lib:$N/nccl/lib:$PWD/$A/mlx_cuda_13.libs
ldd $RT/lib/libmlx.so | grep 'not found'
export PYTHONPATH=$PWD/.devcache/payload/py PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import mlx.core as mx; print(mx.default_device(), mx.__version__)" 2>&1 | tail -2
E=.devcache/payload/bench_vlm
make_inputs
LOG=$OUT/log.txt RES=$OUT/results.jsonl
# run NAME ROUND CMD...: CMD's last JSON line (or null), its exit status and wall time -> $RES
run() {
  local name=$1 round=$2 t0=$SECONDS rc line; shift 2
  echo "=== $name round $round: $*" >>$LOG
  timeout 150 "$@" >/tmp/run.out 2>>$LOG; rc=$?
  line=$(grep '^{' /tmp/run.out | tail -1)
  echo "{\"run\": \"$name\", \"round\": $round, \"rc\": $rc, \"wall_s\": $((SECONDS - t0)), \"result\": ${line:-null}}" | tee -a $RES
}
echo "=== diag_vlm.py" >>$LOG
timeout 150 python3 -X faulthandler xtask/bench/gpu/diag_vlm.py $M 2>>$LOG | tee $OUT/diag.jsonl
P="Describe this image."
G="python3 -X faulthandler xtask/bench/mlx_vlm_generate.py"
for round in 1 2; do
  run engine $round $E $M $IMG "$P" 64 --dtype native
  run mlx_vlm-dedupe $round $G $M $IMG "$P" 64 bfloat16 --dedupe-windows
  run mlx_vlm-nocudnn $round env MLX_CUDA_USE_CUDNN_SDPA=0 $G $M $IMG "$P" 64 bfloat16
done
run mlx_vlm-plain 1 $G $M $IMG "$P" 64 bfloat16
if ! grep -q '"run": "mlx_vlm-[a-z]*", "round": [0-9], "rc": 0' $RES; then
  M2=$HOME/qwen2vl-2b
  [ -f $M2/model.safetensors ] || python3 xtask/bench/gpu/make_qwen25vl.py $M2 crates/engine-vlm/tests/fixtures/qwen2-vl --qwen2 >>$LOG 2>&1
  for round in 1 2; do
    run qwen2vl-engine $round $E $M2 $IMG "$P" 64 --dtype native
    run qwen2vl-mlx_vlm $round $G $M2 $IMG "$P" 64 bfloat16
  done
fi
tail -c 3000 $LOG
