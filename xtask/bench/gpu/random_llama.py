"""Random-weight Llama checkpoints at real shapes for GPU decode benchmarks
(the GPU machine has torch but no internet). Writes config.json,
model.safetensors (bf16), a minimal tokenizer.json and prompt_ids.json.
Usage: python random_llama.py OUT_DIR {1b|8b|thin} [PROMPT_LEN]
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

SHAPES = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    # 8B's depth and head size with tiny matrices: a decode step of it is all per-op cost.
    "thin": dict(hidden_size=512, num_hidden_layers=32, intermediate_size=1024, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=128, tie_word_embeddings=True),
}

out, size = sys.argv[1], sys.argv[2]
prompt_len = int(sys.argv[3]) if len(sys.argv) > 3 else 512
cfg = dict(model_type="llama", vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
           max_position_embeddings=131072, torch_dtype="bfloat16",
           rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}, **SHAPES[size])
os.makedirs(out, exist_ok=True)
g = torch.Generator(device="cuda").manual_seed(0)
d, hd, ff = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
nh, nkv, v = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]


def rnd(*shape):
    return (torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16) * 0.02).cpu()


w = {"model.embed_tokens.weight": rnd(v, d), "model.norm.weight": torch.ones(d, dtype=torch.bfloat16)}
if not cfg["tie_word_embeddings"]:
    w["lm_head.weight"] = rnd(v, d)
for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}"
    w[f"{p}.self_attn.q_proj.weight"] = rnd(nh * hd, d)
    w[f"{p}.self_attn.k_proj.weight"] = rnd(nkv * hd, d)
    w[f"{p}.self_attn.v_proj.weight"] = rnd(nkv * hd, d)
    w[f"{p}.self_attn.o_proj.weight"] = rnd(d, nh * hd)
    w[f"{p}.mlp.gate_proj.weight"] = rnd(ff, d)
    w[f"{p}.mlp.up_proj.weight"] = rnd(ff, d)
    w[f"{p}.mlp.down_proj.weight"] = rnd(d, ff)
    w[f"{p}.input_layernorm.weight"] = torch.ones(d, dtype=torch.bfloat16)
    w[f"{p}.post_attention_layernorm.weight"] = torch.ones(d, dtype=torch.bfloat16)
save_file(w, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
vocab = {"<unk>": 0, "<eos>": 128001}
vocab.update({f"t{i}": i for i in range(1, 1000)})
tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
       "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
       "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}}
json.dump(tok, open(os.path.join(out, "tokenizer.json"), "w"))
json.dump({"eos_token": "<eos>"}, open(os.path.join(out, "tokenizer_config.json"), "w"))
ids = torch.randint(1000, 100000, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
json.dump(ids, open(os.path.join(out, "prompt_ids.json"), "w"))
print("wrote", out)
