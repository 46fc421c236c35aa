"""Tiny random checkpoints of every engine-llm architecture, in the layout the
real models use, with mlx-lm's logits and greedy tokens as the oracle.

Run by `cargo xtask parity-fixtures` (output: target/parity/<name>/):
    target/oracle/bin/python xtask/parity/make_tiny_llms.py target/parity
Each folder holds config.json, model.safetensors, tokenizer.json and
expected.json {"prompt", "logits" (L x vocab, f32), "greedy" (32 tokens)}.
"""
import json
import os
import sys
import zlib

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.utils import _get_classes

VOCAB = 256
BASE = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, rms_norm_eps=1e-5, rope_theta=10000.0,
            max_position_embeddings=512, tie_word_embeddings=False)

CONFIGS = {
    "llama": dict(model_type="llama"),
    "llama3-scaled": dict(model_type="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0,
                          "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mistral": dict(model_type="mistral"),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", head_dim=16, tie_word_embeddings=True),
    "phi3": dict(model_type="phi3"),
    "gemma2": dict(model_type="gemma2", head_dim=16, query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0, sliding_window=4096, hidden_activation="gelu_pytorch_tanh"),
    "gemma3": dict(model_type="gemma3_text", head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                   sliding_window_pattern=2, rope_local_base_freq=10000.0, rope_theta=1000000.0),
}
PROMPT = [5, 17, 42, 99, 3, 250, 7, 7, 128, 64, 31, 200]


def tokenizer_json():
    vocab = {"<unk>": 0, "</s>": 1}
    for i in range(2, VOCAB):
        vocab[f"t{i}"] = i
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 1, "content": "</s>", "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
        "decoder": None, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def build(name, overrides, quantize):
    cfg = dict(BASE, **overrides)
    mx.random.seed(zlib.crc32(name.encode()) % 1000)
    model_cls, args_cls = _get_classes(cfg)
    model = model_cls(args_cls.from_dict(cfg))
    # Random init is mostly small; widen it so logits differ measurably between positions.
    params = [(k, mx.random.normal(v.shape) * 0.2) for k, v in tree_flatten(model.parameters())]
    model.load_weights(params)
    if quantize:
        nn.quantize(model, group_size=32, bits=4)
        cfg["quantization"] = {"group_size": 32, "bits": 4}
    mx.eval(model.parameters())
    logits = model(mx.array([PROMPT]))[0].astype(mx.float32)
    greedy = []
    for tok, _ in generate_step(mx.array(PROMPT), model, max_tokens=32):
        greedy.append(int(tok))
    return cfg, model, logits, greedy


def main(out_dir):
    for name, overrides in CONFIGS.items():
        for quantize in (False, True):
            tag = name + ("-4bit" if quantize else "")
            d = os.path.join(out_dir, tag)
            os.makedirs(d, exist_ok=True)
            cfg, model, logits, greedy = build(name, overrides, quantize)
            mx.save_safetensors(os.path.join(d, "model.safetensors"), dict(tree_flatten(model.parameters())))
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(cfg, f)
            with open(os.path.join(d, "tokenizer.json"), "w") as f:
                json.dump(tokenizer_json(), f)
            with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
                json.dump({"eos_token": "</s>"}, f)
            with open(os.path.join(d, "expected.json"), "w") as f:
                json.dump({"prompt": PROMPT, "logits": logits.tolist(), "greedy": greedy}, f)
            print("wrote", d)


if __name__ == "__main__":
    main(sys.argv[1])
