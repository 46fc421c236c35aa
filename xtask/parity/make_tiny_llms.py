"""Tiny random checkpoints of every engine-llm architecture, in the layout the
real models use, with mlx-lm's logits and greedy tokens as the oracle.

Run by `cargo xtask parity-fixtures` (output: target/parity/<name>/):
    target/oracle/bin/python xtask/parity/make_tiny_llms.py target/parity
Each folder holds config.json, model.safetensors, tokenizer.json and
expected.json {"prompt", "logits" (L x vocab, f32), "greedy" (32 tokens)};
phi3-longrope-gguf holds the same Phi-3 weights as a llama.cpp-style model.gguf
(needs the `gguf` package).
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
    # Phi-3.5/Phi-4-mini style: LongRoPE (8x the trained context: mscale > 1) on 3/4 of each head.
    "phi3-longrope": dict(model_type="phi3", partial_rotary_factor=0.75, original_max_position_embeddings=64,
                          rope_scaling={"type": "longrope", "short_factor": [1.0] * 6,
                                        "long_factor": [1.0, 1.5, 2.0, 4.0, 8.0, 16.0]}),
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


def write_phi3_gguf(path, cfg, model):
    """The dense phi3-longrope checkpoint as a llama.cpp-style GGUF (f32): fused attn_qkv and
    ffn_up (gate and up), LongRoPE factors as rope_factors_* tensors, a SentencePiece-style
    vocabulary in the metadata. Same weights, so mlx-lm's logits are the oracle for it too."""
    import gguf
    import numpy as np

    w = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    writer = gguf.GGUFWriter(path, "phi3")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_dimension_count(int(hd * cfg["partial_rotary_factor"]))
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_rope_scaling_orig_ctx_len(cfg["original_max_position_embeddings"])
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "</s>"] + [f"t{i}" for i in range(2, VOCAB)]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_types([2, 3] + [1] * (VOCAB - 2))
    writer.add_unk_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(False)
    writer.add_tensor("token_embd.weight", w["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", w["model.norm.weight"])
    writer.add_tensor("output.weight", w["lm_head.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", w[p + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_qkv.weight", w[p + "self_attn.qkv_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", w[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", w[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", w[p + "mlp.gate_up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", w[p + "mlp.down_proj.weight"])
    scaling = cfg["rope_scaling"]
    writer.add_tensor("rope_factors_long.weight", np.array(scaling["long_factor"], dtype=np.float32))
    writer.add_tensor("rope_factors_short.weight", np.array(scaling["short_factor"], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


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
            if tag == "phi3-longrope":
                g = os.path.join(out_dir, "phi3-longrope-gguf")
                os.makedirs(g, exist_ok=True)
                write_phi3_gguf(os.path.join(g, "model.gguf"), cfg, model)
                with open(os.path.join(g, "expected.json"), "w") as f:
                    json.dump({"prompt": PROMPT, "logits": logits.tolist(), "greedy": greedy}, f)
                print("wrote", g)


if __name__ == "__main__":
    main(sys.argv[1])
