"""mlx-vlm side of `cargo xtask bench vlm`: one greedy answer about one image
on the same checkpoint, the weights cast to the same dtype as the engine's;
prints {"ttft_ms", "decode_tok_s", "prompt_tokens", "generated"} like it.
Usage: python mlx_vlm_generate.py MODEL_DIR IMAGE PROMPT N DTYPE
"""
import json
import sys
import time

import mlx.core as mx
from mlx.utils import tree_map
from mlx_vlm import load, stream_generate
from mlx_vlm.prompt_utils import apply_chat_template

path, image, prompt, n, dtype = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
model, processor = load(path)
dt = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}[dtype]
model.update(tree_map(lambda a: a.astype(dt) if mx.issubdtype(a.dtype, mx.floating) else a, model.parameters()))
mx.eval(model.parameters())
text = apply_chat_template(processor, model.config, prompt, num_images=1)
for _ in stream_generate(model, processor, text, [image], max_tokens=2, temperature=0.0):
    pass
start = time.perf_counter()
first = last = None
count = 0
prompt_tokens = 0
for r in stream_generate(model, processor, text, [image], max_tokens=n, temperature=0.0):
    now = time.perf_counter()
    count += 1
    prompt_tokens = getattr(r, "prompt_tokens", prompt_tokens)
    if first is None:
        first = now
    last = now
print(json.dumps({"ttft_ms": (first - start) * 1e3, "decode_tok_s": (count - 1) / max(last - first, 1e-9),
                  "prompt_tokens": prompt_tokens, "generated": count}))
