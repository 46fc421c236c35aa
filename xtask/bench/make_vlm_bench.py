"""Random weights at Qwen2-VL-2B's real shapes, in the original Hugging Face
layout (flat config.json + vision_config, `model.*` / `visual.*` names, f16),
for `cargo xtask bench vlm`; the tokenizer, template and image processor come
from the tiny committed fixture (ids stay inside the real vocabulary).
Usage: python make_vlm_bench.py OUT_DIR FIXTURE_DIR
"""
import json
import os
import shutil
import sys

import mlx.core as mx

out, fixture = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
T = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
         num_key_value_heads=2, vocab_size=151936)
V = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
         spatial_merge_size=2, temporal_patch_size=2, in_chans=3, hidden_act="quick_gelu", model_type="qwen2_vl")
fx = json.load(open(os.path.join(fixture, "config.json")))
config = dict(architectures=["Qwen2VLForConditionalGeneration"], model_type="qwen2_vl", **T,
              rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768, tie_word_embeddings=True,
              rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, hidden_act="silu",
              vision_config=V, image_token_id=fx["image_token_id"], video_token_id=fx["video_token_id"],
              vision_start_token_id=fx["vision_start_token_id"], vision_end_token_id=fx["vision_end_token_id"],
              bos_token_id=1, eos_token_id=3, torch_dtype="float16")
json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=1)
for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
    shutil.copy(os.path.join(fixture, f), out)
proc = json.load(open(os.path.join(fixture, "processor_config.json")))["image_processor"]
proc["size"] = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
proc["min_pixels"], proc["max_pixels"] = 56 * 56, 28 * 28 * 1280
json.dump(proc, open(os.path.join(out, "preprocessor_config.json"), "w"), indent=1)

mx.random.seed(0)
w = {}
def p(name, *shape, scale=0.02):
    w[name] = (mx.random.normal(shape) * scale).astype(mx.float16)
def ones(name, n):
    w[name] = mx.ones((n,), dtype=mx.float16)

d, f = T["hidden_size"], T["intermediate_size"]
kv = T["num_key_value_heads"] * d // T["num_attention_heads"]
p("model.embed_tokens.weight", T["vocab_size"], d)
for i in range(T["num_hidden_layers"]):
    l = f"model.layers.{i}"
    p(f"{l}.self_attn.q_proj.weight", d, d); p(f"{l}.self_attn.q_proj.bias", d)
    p(f"{l}.self_attn.k_proj.weight", kv, d); p(f"{l}.self_attn.k_proj.bias", kv)
    p(f"{l}.self_attn.v_proj.weight", kv, d); p(f"{l}.self_attn.v_proj.bias", kv)
    p(f"{l}.self_attn.o_proj.weight", d, d)
    p(f"{l}.mlp.gate_proj.weight", f, d); p(f"{l}.mlp.up_proj.weight", f, d); p(f"{l}.mlp.down_proj.weight", d, f)
    ones(f"{l}.input_layernorm.weight", d); ones(f"{l}.post_attention_layernorm.weight", d)
ones("model.norm.weight", d)
e, m = V["embed_dim"], V["embed_dim"] * V["mlp_ratio"]
p("visual.patch_embed.proj.weight", e, 3, 2, 14, 14)
for i in range(V["depth"]):
    b = f"visual.blocks.{i}"
    for n in ["norm1", "norm2"]:
        ones(f"{b}.{n}.weight", e); p(f"{b}.{n}.bias", e)
    p(f"{b}.attn.qkv.weight", 3 * e, e); p(f"{b}.attn.qkv.bias", 3 * e)
    p(f"{b}.attn.proj.weight", e, e); p(f"{b}.attn.proj.bias", e)
    p(f"{b}.mlp.fc1.weight", m, e); p(f"{b}.mlp.fc1.bias", m)
    p(f"{b}.mlp.fc2.weight", e, m); p(f"{b}.mlp.fc2.bias", e)
ones("visual.merger.ln_q.weight", e); p("visual.merger.ln_q.bias", e)
p("visual.merger.mlp.0.weight", 4 * e, 4 * e); p("visual.merger.mlp.0.bias", 4 * e)
p("visual.merger.mlp.2.weight", d, 4 * e); p("visual.merger.mlp.2.bias", d)
mx.save_safetensors(os.path.join(out, "model.safetensors"), w, metadata={"format": "pt"})
print("wrote", out)
