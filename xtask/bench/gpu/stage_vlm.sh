#!/usr/bin/env bash
# Stages what run_vlm.sh carries, here (x86_64 Linux), into .devcache (git-ignored):
#   .devcache/cuda/{a,b,sdk}        /work/shared/device/stage-mlx-cuda-native.sh (libmlx CUDA halves)
#   .devcache/vlm/payload.tar.xz    py/ (mlx, mlx_lm, mlx_vlm unzipped), include/, bench_vlm
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
[ -f .devcache/cuda/sdk/mlx/lib/libmlx.so ] || bash /work/shared/device/stage-mlx-cuda-native.sh .devcache/cuda
S=.devcache/vlm-src
mkdir -p $S/py .devcache/vlm
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 312 --implementation cp \
  --platform manylinux_2_35_x86_64 -d $S "mlx==0.32.4" "mlx-lm==0.32.2" "mlx-vlm==0.7.10"
for w in $S/*.whl; do python3 -m zipfile -e "$w" $S/py; done
rm -rf $S/include && cp -r .devcache/cuda/sdk/mlx/include $S/include
MLX_DIR=$PWD/.devcache/cuda/sdk/mlx CARGO_TARGET_DIR=target/cuda nice -n 10 cargo build --release \
  -p engine-vlm --example bench_vlm --features engine-mlx/cuda
cp target/cuda/release/examples/bench_vlm $S/bench_vlm && strip $S/bench_vlm
tar cf - -C $S py include bench_vlm | xz -9 -T2 > .devcache/vlm/payload.tar.xz
du -b .devcache/cuda/a .devcache/cuda/b .devcache/vlm
