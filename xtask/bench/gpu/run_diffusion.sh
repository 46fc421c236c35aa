#!/usr/bin/env bash
# GPU image bench (issue 11), one device call, carry [".devcache/gpu", ".devcache/diff"] (stage_kernels.sh: libmlx
# for the H100/H200, and the diffusers 0.42.1 + importlib_metadata wheels and bench_image, engine-diffusion's example
# built with the cuda feature):  bash xtask/bench/gpu/run_diffusion.sh
# (or carry [".devcache/diff"] alone on a machine where libmlx is already joined in $HOME/mlx-rt by an earlier call).
# Makes random-weight SDXL-Turbo- and SD-2.1-shaped pipelines at real sizes (diffusion_gpu.py make, torch on the
# GPU, float16 safetensors), then at 512x512 from the same initial latents: SDXL-Turbo-shaped 1 step (Euler
# trailing, guidance 0) and SD-2.1-shaped 50 steps (DDIM, guidance 7.5, batched CFG); the engine in float16 and
# bfloat16 and diffusers in float16, each after a warm-up, two timed runs. $OUT/diffusion.jsonl, one line a run:
# {"kind", "side", result (seconds per image, loop and VAE split)}; then diag_diffusion.py (MLX's conv2d, group
# norm and attention against torch at these shapes) -> $OUT/diag_diffusion.jsonl. DTYPES="bfloat16" runs the engine
# in one dtype only, DIAG=0 skips diag_diffusion.py, TRACE=0 the kernel traces.
set -uo pipefail
D=.devcache/diff W=$HOME/diffusion RES=$OUT/diffusion.jsonl
source xtask/bench/gpu/mlx_env.sh
python3 -m pip install -q --no-deps --no-compile --target $HOME/diff-py $D/*.whl

export PYTHONPATH=$PYTHONPATH:$HOME/diff-py PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a $OUT/gpu.txt
rm -rf $HOME/models   # the decode bench's weights, if any: disk for these
P="a photo of an astronaut riding a horse on mars" NEG="blurry, low quality"
for kind in sdxl-turbo sd21; do
  [ -f $W/$kind/model/model_index.json ] || timeout 200 python3 xtask/bench/gpu/diffusion_gpu.py make $W/$kind $kind 2>&1 | tail -3
  case $kind in sdxl-turbo) set -- 1 0.0 euler ;; sd21) set -- 50 7.5 ddim ;; esac
  for dtype in ${DTYPES:-float16 bfloat16}; do
    timeout 200 $BIN/bench_image $W/$kind/model $W/$kind/latents.safetensors $W/$kind/ours.safetensors "$@" "$P" "$NEG" \
      $dtype 2 2>/tmp/engine.err | while read -r line; do
      echo "{\"kind\": \"$kind\", \"side\": \"engine\", \"result\": $line}" | tee -a $RES; done
    tail -2 /tmp/engine.err
  done
  timeout 200 python3 xtask/bench/gpu/diffusion_gpu.py run $W/$kind $kind 2 $W/$kind/ours.safetensors 2>/tmp/diffusers.err \
    | while read -r line; do echo "{\"kind\": \"$kind\", \"side\": \"diffusers\", \"result\": $line}" | tee -a $RES; done
  tail -2 /tmp/diffusers.err
done
# Kernel traces (libkernel_trace.so, carried in .devcache/gpu or left in $HOME by run_trace.sh): the last KTRACE_TAIL_MS of one SD-2.1-shaped
# run each of the engine (bfloat16) and diffusers -> $OUT/traces_diffusion.jsonl (kernels by name and grid, idle gaps).
[ -f .devcache/gpu/libkernel_trace.so ] && cp .devcache/gpu/libkernel_trace.so "$HOME/"
if [ -f "$HOME/libkernel_trace.so" ] && [ "${TRACE:-1}" != 0 ]; then
  kind=sd21
  rm -f /tmp/ktrace.jsonl
  KTRACE_OUT=/tmp/ktrace.jsonl KTRACE_TAIL_MS=400 CUDA_INJECTION64_PATH=$HOME/libkernel_trace.so timeout 200 \
    $BIN/bench_image $W/$kind/model $W/$kind/latents.safetensors /tmp/ours_traced.safetensors 50 7.5 ddim "$P" "$NEG" \
    bfloat16 1 >/dev/null 2>&1
  sed 's/^{/{"run":"engine-sd21",/' /tmp/ktrace.jsonl >> $OUT/traces_diffusion.jsonl
  rm -f /tmp/ktrace.jsonl
  KTRACE_OUT=/tmp/ktrace.jsonl KTRACE_TAIL_MS=400 CUDA_INJECTION64_PATH=$HOME/libkernel_trace.so timeout 200 \
    python3 xtask/bench/gpu/diffusion_gpu.py run $W/$kind $kind 1 >/dev/null 2>&1
  sed 's/^{/{"run":"diffusers-sd21",/' /tmp/ktrace.jsonl >> $OUT/traces_diffusion.jsonl
  grep -h '"summary"' $OUT/traces_diffusion.jsonl
fi
# Where the time goes: MLX's conv / group norm / attention vs torch at these shapes.
[ "${DIAG:-1}" = 0 ] || timeout 150 python3 xtask/bench/gpu/diag_diffusion.py 2>&1 | tee $OUT/diag_diffusion.jsonl
