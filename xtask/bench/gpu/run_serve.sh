#!/usr/bin/env bash
# GPU continuous-batching bench (issue 16's batch-32 goal), one device call after
# `bash xtask/bench/gpu/stage_kernels.sh` here, carry [".devcache/gpu"] (H100/H200):
#   bash xtask/bench/gpu/run_serve.sh
# Writes a random Llama-3.1-8B-shaped bf16 checkpoint and STREAMS (default 32) random 256-token prompts, then
# runs engine-llm's Scheduler (bench_batch, no HTTP) and mlx-lm's batch_generate on the same weights and
# prompts, 128 tokens each, twice each: JSON lines in $OUT/engine.jsonl and $OUT/mlx_lm.jsonl.
set -uo pipefail
STREAMS=${STREAMS:-32}
M=$HOME/llama-8b
source xtask/bench/gpu/mlx_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
[ -f $M/model.safetensors ] || python3 xtask/bench/gpu/random_llama.py $M 8b 256 >/dev/null
python3 -c "
import json, random
r = random.Random(2)
json.dump([[r.randrange(1000, 100000) for _ in range(256)] for _ in range($STREAMS)], open('$M/prompts.json', 'w'))
json.dump([128001], open('$M/eos.json', 'w'))"
python3 -c "import mlx.core as mx; print(mx.default_device(), mx.__version__)" 2>&1 | tail -2
for round in 1 2; do
  timeout 250 $BIN/bench_batch $M --prompt-ids $M/prompts.json --tokens 128 --streams $STREAMS | tee -a $OUT/engine.jsonl
  timeout 250 python3 xtask/bench/mlx_lm_batch.py $M $M/prompts.json 128 $M/eos.json native 2>&1 | tail -1 | tee -a $OUT/mlx_lm.jsonl
done
