"""mlx-lm side of `cargo xtask bench llm`: greedy decode of the same prompt ids
on the same weights; prints {"tok_s", "ttft_ms", "generated"} like the engine.
Usage: python mlx_lm_decode.py MODEL_DIR PROMPT_IDS_JSON N
"""
import json
import sys
import time

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model

model, _ = load_model(__import__("pathlib").Path(sys.argv[1]))
ids = mx.array(json.load(open(sys.argv[2])))
n = int(sys.argv[3])
for _ in generate_step(ids, model, max_tokens=8):
    pass
start = time.perf_counter()
first = None
count = 0
for tok, _ in generate_step(ids, model, max_tokens=n):
    count += 1
    if first is None:
        first = time.perf_counter()
end = time.perf_counter()
print(json.dumps({"tok_s": (count - 1) / (end - first), "ttft_ms": (first - start) * 1e3, "generated": count}))
