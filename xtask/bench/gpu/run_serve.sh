#!/usr/bin/env bash
# GPU continuous-batching bench, two device calls (shared device recipe, /work/shared/device/README.md):
#   call 1, carry [".devcache/cuda/a"]:  bash xtask/bench/gpu/run_serve.sh 1
#     keeps half a of libmlx in
#     $HOME/stage_a and writes a random Llama-3.1-8B-shaped bf16 checkpoint and STREAMS random
#     256-token prompts;
#   call 2, right after, carry [".devcache/cuda/b"] (half b, include.tgz, the mlx and mlx_lm wheels and
#   bench_batch.gz: the example built with --features engine-mlx/cuda):  bash xtask/bench/gpu/run_serve.sh 2
#     joins libmlx (CUDA), installs MLX Python + mlx-lm, and runs engine-llm's Scheduler
#     (bench_batch) and mlx-lm's batch_generate on the same weights and prompts, 128 tokens each,
#     twice each, writing JSON lines to $OUT.
set -uo pipefail
STREAMS=${STREAMS:-32}
M=$HOME/llama-8b
if [ "${1:-2}" = 1 ]; then
  rm -rf "$HOME/stage_a" && cp -r .devcache/cuda/a "$HOME/stage_a"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
  [ -f $M/model.safetensors ] || python3 xtask/bench/gpu/random_llama.py $M 8b 256
  python3 -c "
import json, random
r = random.Random(2)
json.dump([[r.randrange(1000, 100000) for _ in range(256)] for _ in range($STREAMS)], open('$M/prompts.json', 'w'))
json.dump([128001], open('$M/eos.json', 'w'))"
  ls -la $M; df -h $HOME | tail -1
  exit 0
fi
A=.devcache/cuda/a B=.devcache/cuda/b RT=$PWD/.devcache/rt
[ -f $A/libmlx.zst.aa ] || { mkdir -p .devcache/cuda && rm -rf $A && cp -r "$HOME/stage_a" $A; }
python3 -m pip install -q --no-deps $B/zstandard-*.whl
mkdir -p $RT/lib && cat $A/libmlx.zst.aa $B/libmlx.zst.ab | python3 -c "import sys,zstandard; zstandard.ZstdDecompressor().copy_stream(sys.stdin.buffer, open('$RT/lib/libmlx.so','wb'))"
tar xzf $B/include.tgz -C $RT
N=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
export LD_LIBRARY_PATH=$RT/lib:$N/cu13/lib:$N/cudnn/lib:$N/nccl/lib:$PWD/$A/mlx_cuda_13.libs
python3 -m pip install -q --no-deps --target .devcache/py $B/mlx-0.32.4-*.whl $B/mlx_lm-*.whl
export PYTHONPATH=$PWD/.devcache/py
python3 -c "import mlx.core as mx; print(mx.default_device(), mx.__version__)" 2>&1 | tail -2
python3 -c "import gzip,shutil; shutil.copyfileobj(gzip.open('$B/bench_batch.gz'), open('.devcache/bench_batch','wb'))" && chmod +x .devcache/bench_batch
for round in 1 2; do
  .devcache/bench_batch $M --prompt-ids $M/prompts.json --tokens 128 --streams $STREAMS | tee -a $OUT/engine.jsonl
  python3 xtask/bench/mlx_lm_batch.py $M $M/prompts.json 128 $M/eos.json native 2>&1 | tail -1 | tee -a $OUT/mlx_lm.jsonl
done
