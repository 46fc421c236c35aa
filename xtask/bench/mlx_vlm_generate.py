"""mlx-vlm side of `cargo xtask bench vlm`: one greedy answer about one image
on the same checkpoint, the weights cast to the same dtype as the engine's;
prints {"ttft_ms", "decode_tok_s", "prompt_tokens", "generated"} like it. ttft_ms here is end to end
(image read, processor, vision tower, prefill: the engine's e2e_ttft_ms in xtask/bench/gpu/vlm_e2e);
decode_tok_s is (tokens - 1) / (last token - first token), as the engine's.
Usage: python mlx_vlm_generate.py MODEL_DIR IMAGE PROMPT N DTYPE [--dedupe-windows]
--dedupe-windows: Qwen2.5-VL only. mlx-vlm 0.7.10's vision tower means to drop repeated entries of
cu_window_seqlens (the windows that fall wholly in the padding, which HF drops with
torch.unique_consecutive), but its loop tests mx.array scalars against a set, and those hash by
identity, so nothing is dropped: a 448x448 image gets 9 zero-length windows and 9 SDPA calls on
zero-length q/k/v per windowed block. MLX's CUDA backend hands those to cuDNN, which dies with SIGFPE
(xtask/bench/gpu/diag_vlm.py). The flag drops the repeats as HF does; every window with a token in
it is computed as before (the empty ones had no work), so the output is unchanged.
"""
import json
import sys
import time

import mlx.core as mx
from mlx.utils import tree_map
from mlx_vlm import load, stream_generate
from mlx_vlm.prompt_utils import apply_chat_template


def dedupe_windows():
    from mlx_vlm.models.qwen2_5_vl import vision

    window_index = vision.VisionModel.get_window_index

    def get_window_index(self, grid_thw):
        index, cu = window_index(self, grid_thw)
        cu = cu.tolist()
        return index, mx.array([c for i, c in enumerate(cu) if i == 0 or c != cu[i - 1]])

    vision.VisionModel.get_window_index = get_window_index


def main():
    path, image, prompt, n, dtype = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    dedupe = "--dedupe-windows" in sys.argv[6:]
    if dedupe:
        dedupe_windows()
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
        # one result per token, then a final one that repeats the last token (finish_reason set):
        # count tokens, not results, as the engine does
        if r.token is None or r.generation_tokens == count:
            continue
        count = r.generation_tokens
        prompt_tokens = getattr(r, "prompt_tokens", prompt_tokens)
        if first is None:
            first = now
        last = now
    print(json.dumps({"ttft_ms": (first - start) * 1e3, "decode_tok_s": (count - 1) / max(last - first, 1e-9),
                      "prompt_tokens": prompt_tokens, "generated": count, "dedupe_windows": dedupe}))


if __name__ == "__main__":
    main()
