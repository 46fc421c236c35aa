#!/usr/bin/env bash
# Stages, here (x86_64 Linux), what the GPU decode and image benches carry, into .devcache (git-ignored):
#   .devcache/cuda/a          half a of libmlx (CUDA) + the wheel's BLAS libs   (/work/shared/device/stage-mlx-cuda-native.sh),
#                             parity.tar.xz (target/parity's fixtures, for parity_gpu)
#   .devcache/cuda/b          half b + zstandard, and: include.tgz (the wheel's mlx/include, CCCL included: NVRTC needs it),
#                             the mlx 0.32.4 / mlx-lm 0.32.2 wheels (the baseline), bench_decode, qmv_check, attn_check and
#                             parity_gpu (CUDA builds, xz),
#                             libkernel_trace.so (kernel_trace.c: a CUPTI kernel tracer, built against the CUPTI headers of
#                             the torch venv of `cargo xtask torch-fixtures`, target/torch: its nvidia cu13 wheel, or of
#                             NVIDIA's cupti/runtime/crt 13.1 wheels in .devcache/cupti)
#   .devcache/gpu             all of a and b a decode call needs, in one carry, for the H100/H200 alone: libmlx.so.xz (its
#                             device code pruned to sm_90 by prune_fatbin.py: 16 MB instead of 71), the BLAS libs,
#                             include.tgz, the two wheels, bin/ (the binaries), parity.tar.xz, libkernel_trace.so
#   .devcache/diff            diffusers 0.42.1 + importlib_metadata wheels, bench_image (CUDA build, xz)
# Then the device calls: run.sh's header (decode, three calls with run_qmv.sh) and run_diffusion.sh.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
[ -f .devcache/cuda/sdk/mlx/lib/libmlx.so ] || bash /work/shared/device/stage-mlx-cuda-native.sh .devcache/cuda
B=.devcache/cuda/b D=.devcache/diff G=.devcache/gpu
# The wheel's BLAS/LAPACK libs travel xz'd (half a plus the work tree outgrew a call's 64 MiB); mlx_env.sh unpacks them.
for f in .devcache/cuda/a/mlx_cuda_13.libs/*.so*; do case $f in *.xz) ;; *) xz -9 -T2 "$f" ;; esac; done
mkdir -p $D
[ -f $B/include.tgz ] || tar czf $B/include.tgz -C .devcache/cuda/sdk/mlx include
ls $B/mlx-0.32.4-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: --python-version 312 \
  --implementation cp --platform manylinux_2_35_x86_64 -d $B "mlx==0.32.4" "mlx-lm==0.32.2"
ls $D/diffusers-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  -d $D "diffusers==0.42.1" importlib_metadata
MLX_DIR=$PWD/.devcache/cuda/sdk/mlx CARGO_TARGET_DIR=target/cuda nice -n 10 cargo build --release \
  -p engine-llm --example bench_decode --example parity_gpu --example bench_batch -p engine-mlx --example qmv_check --example attn_check \
  -p engine-diffusion --example bench_image --features engine-mlx/cuda
# xz: half b, the work tree and these must stay under the 64 MiB a call carries (mlx_env.sh unpacks them).
for e in bench_decode parity_gpu qmv_check attn_check; do strip -o /tmp/$e target/cuda/release/examples/$e && xz -9 -T2 -c /tmp/$e > $B/$e.xz; done
mkdir -p $G/bin $G/mlx_cuda_13.libs
cp $B/*.xz $G/bin/ && strip -o /tmp/bench_batch target/cuda/release/examples/bench_batch && xz -9 -T2 -c /tmp/bench_batch > $G/bin/bench_batch.xz && cp .devcache/cuda/a/mlx_cuda_13.libs/*.xz $G/mlx_cuda_13.libs/ && cp $B/include.tgz $B/mlx*.whl $G/
L=.devcache/cuda/sdk/mlx/lib/libmlx.so
[ $G/libmlx.so.xz -nt $L ] || { python3 xtask/bench/gpu/prune_fatbin.py $L /tmp/libmlx-sm90.so 90 \
  && xz -9 -T2 -c /tmp/libmlx-sm90.so > $G/libmlx.so.xz && rm /tmp/libmlx-sm90.so; }
strip -o /tmp/bench_image target/cuda/release/examples/bench_image && xz -9 -T2 -c /tmp/bench_image > $D/bench_image.xz
# The parity fixtures travel in half a's call (half b's is full): run_qmv.sh 1 keeps them in $HOME/stage_a.
if [ -d target/parity ]; then
  tar cJf .devcache/cuda/a/parity.tar.xz -C target parity && cp .devcache/cuda/a/parity.tar.xz $G/
else
  echo "no target/parity (cargo xtask parity-fixtures makes it): parity_gpu will have no fixtures"
fi
T=$(echo target/torch/lib/python3*/site-packages) C=.devcache/cupti inc=()
if [ -d "$T/nvidia/cu13/include" ]; then
  # CUPTI's headers include crt/host_defines.h, which the cu13 wheel lacks and triton's copy provides.
  inc=(-I"$T/nvidia/cu13/include" -idirafter "$T/triton/backends/nvidia/include") lib=$T/nvidia/cu13/lib
elif [ -f $C/nvidia/cu13/include/cupti.h ] || { python3 -m pip download -q --no-deps -d $C/dl "nvidia-cuda-cupti==13.1.115" \
    "nvidia-cuda-runtime==13.1.80" "nvidia-cuda-crt==13.1.115" && for w in $C/dl/*.whl; do python3 -m zipfile -e "$w" $C; done; }; then
  # No torch venv: the headers of NVIDIA's PyPI wheels (~12 MB; the device's torch brings libcupti.so.13).
  inc=(-I$C/nvidia/cu13/include) lib=$C/nvidia/cu13/lib
else
  echo "no CUPTI headers (no target/torch venv, NVIDIA's wheels not fetched): the kernel tracer is not staged"
fi
if [ ${#inc[@]} -gt 0 ]; then
  gcc -O2 -Wall -shared -fPIC "${inc[@]}" -o $B/libkernel_trace.so xtask/bench/gpu/kernel_trace.c -L"$lib" -l:libcupti.so.13
  cp $B/libkernel_trace.so $G/
fi
du -b .devcache/cuda/a .devcache/cuda/b $G $D
