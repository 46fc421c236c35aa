# Sourced by the GPU bench scripts on the device: joins libmlx (CUDA) from half a (carried now, or
# copied to $HOME/stage_a by an earlier call) and half b into $RT (once), installs MLX Python and
# mlx-lm beside it, unpacks the carried binaries (*.xz in half b and .devcache/diff) into $BIN, and exports
# LD_LIBRARY_PATH and PYTHONPATH. Staged by stage_kernels.sh.
A=.devcache/cuda/a B=.devcache/cuda/b RT=$HOME/mlx-rt
if [ ! -f $RT/lib/libmlx.so ]; then
  [ -f $A/libmlx.zst.aa ] || { rm -rf $A && mkdir -p .devcache/cuda && cp -r "$HOME/stage_a" $A; }
  python3 -m pip install -q --no-deps $B/zstandard-*.whl
  mkdir -p $RT/lib && cat $A/libmlx.zst.aa $B/libmlx.zst.ab | python3 -c "import sys,zstandard; zstandard.ZstdDecompressor().copy_stream(sys.stdin.buffer, open('$RT/lib/libmlx.so','wb'))"
  tar xzf $B/include.tgz -C $RT
  python3 -m pip install -q --no-deps --target $RT/py $B/mlx-0.32.4-*.whl $B/mlx_lm-*.whl
  cp -r $A/mlx_cuda_13.libs $RT/
  for f in $RT/mlx_cuda_13.libs/*.xz; do [ -f "$f" ] && python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], 'wb'))" "$f" && rm "$f"; done
fi
BIN=$RT/bin
mkdir -p $BIN && for f in $B/*.xz .devcache/diff/*.xz; do
  [ -f "$f" ] && python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
    "$f" "$BIN/$(basename "$f" .xz)" && chmod +x "$BIN/$(basename "$f" .xz)"
done
N=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
export LD_LIBRARY_PATH=$RT/lib:$N/cu13/lib:$N/cudnn/lib:$N/nccl/lib:$RT/mlx_cuda_13.libs
export PYTHONPATH=$RT/py
