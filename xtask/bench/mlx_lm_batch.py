"""mlx-lm side of `cargo xtask bench serve`: the same chat prompts (token ids
made by the engine) through mlx-lm's `batch_generate` on the same weights in
float32 (the MLX 4-bit export of the GGUF, dequantized: the engine's CPU
policy), greedy, `N` tokens at most each. Prints one JSON object:
{"tok_s": aggregate generated tokens per second over the whole batch call
(prefill included, as the server's wall time is), "generated", "seconds"}.
Usage: python mlx_lm_batch.py MODEL_DIR PROMPTS_JSON N EOS_IDS_JSON [native]
(`native` keeps the checkpoint's own dtype: the GPU run, bf16).
"""
import json
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx_lm.generate import batch_generate
from mlx_lm.utils import dequantize_model, load_model


class Tokenizer:
    """What batch_generate needs of a tokenizer: the stop ids (and a decode we ignore)."""

    def __init__(self, eos):
        self.eos_token_ids = eos

    def decode(self, ids):
        return ""


model, _ = load_model(Path(sys.argv[1]))
if sys.argv[5:6] != ["native"]:
    model = dequantize_model(model)
    model.set_dtype(mx.float32)
mx.eval(model.parameters())
prompts = json.load(open(sys.argv[2]))
n = int(sys.argv[3])
tok = Tokenizer(json.load(open(sys.argv[4])))
batch_generate(model, tok, prompts[:2], max_tokens=8)  # warm-up
start = time.perf_counter()
r = batch_generate(model, tok, prompts, max_tokens=n, return_token_ids=True)
secs = time.perf_counter() - start
generated = sum(len(t) for t in r.token_ids)
print(json.dumps({"tok_s": generated / secs, "generated": generated, "seconds": secs}))
