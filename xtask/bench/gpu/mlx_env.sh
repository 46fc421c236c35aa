# Sourced by the GPU bench scripts on the device: unpacks libmlx (CUDA) into $RT (once), installs MLX Python and
# mlx-lm beside it, unpacks the carried binaries into $BIN, and exports LD_LIBRARY_PATH and PYTHONPATH. Staged by
# stage_kernels.sh. libmlx comes from .devcache/gpu when carried (one call's worth: its device code pruned to the
# H100/H200's sm_90 by prune_fatbin.py, binaries in bin/), else from the halves .devcache/cuda/a (carried now, or
# copied to $HOME/stage_a by an earlier call) and .devcache/cuda/b.
G=.devcache/gpu A=.devcache/cuda/a B=.devcache/cuda/b RT=$HOME/mlx-rt
unxz() { python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$1" "$2"; }
if [ ! -f $RT/lib/libmlx.so ] && [ -f $G/libmlx.so.xz ]; then
  mkdir -p $RT/lib && unxz $G/libmlx.so.xz $RT/lib/libmlx.so
  tar xzf $G/include.tgz -C $RT
  python3 -m pip install -q --no-deps --target $RT/py $G/mlx-0.32.4-*.whl $G/mlx_lm-*.whl
  cp -r $G/mlx_cuda_13.libs $RT/
elif [ ! -f $RT/lib/libmlx.so ]; then
  [ -f $A/libmlx.zst.aa ] || { rm -rf $A && mkdir -p .devcache/cuda && cp -r "$HOME/stage_a" $A; }
  python3 -m pip install -q --no-deps $B/zstandard-*.whl
  mkdir -p $RT/lib && cat $A/libmlx.zst.aa $B/libmlx.zst.ab | python3 -c "import sys,zstandard; zstandard.ZstdDecompressor().copy_stream(sys.stdin.buffer, open('$RT/lib/libmlx.so','wb'))"
  tar xzf $B/include.tgz -C $RT
  python3 -m pip install -q --no-deps --target $RT/py $B/mlx-0.32.4-*.whl $B/mlx_lm-*.whl
  cp -r $A/mlx_cuda_13.libs $RT/
fi
for f in $RT/mlx_cuda_13.libs/*.xz; do [ -f "$f" ] && unxz "$f" "${f%.xz}" && rm "$f"; done
BIN=$RT/bin
mkdir -p $BIN && for f in $G/bin/*.xz $B/*.xz .devcache/diff/*.xz; do
  [ -f "$f" ] && unxz "$f" "$BIN/$(basename "$f" .xz)" && chmod +x "$BIN/$(basename "$f" .xz)"
done
N=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
export LD_LIBRARY_PATH=$RT/lib:$N/cu13/lib:$N/cudnn/lib:$N/nccl/lib:$RT/mlx_cuda_13.libs
export PYTHONPATH=$RT/py
