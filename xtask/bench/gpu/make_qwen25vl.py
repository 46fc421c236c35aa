"""Random bf16 weights at Qwen2.5-VL-3B's real shapes, in the original Hugging Face layout
(flat config.json + vision_config, `model.*` / `visual.*` names), for the GPU VLM bench
(xtask/bench/gpu/run_vlm.sh). Made with torch (on CUDA when there is one), so the 7.5 GB
checkpoint is written on the GPU machine rather than carried. Tokenizer, template and image
processor come from the tiny committed fixture (crates/engine-vlm/tests/fixtures/qwen2.5-vl),
its min/max pixels patched as xtask/bench/make_vlm_bench.py does.
Usage: python make_qwen25vl.py OUT_DIR FIXTURE_DIR [--tiny] [--qwen2]   (--tiny: 2 text layers,
4 vision blocks, same widths: a quick local check of names and shapes; --qwen2: Qwen2-VL-2B's shapes
instead (LayerNorm + quick-GELU fc1/fc2 vision tower without windows), FIXTURE_DIR then the
qwen2-vl fixture; run_vlm.sh's fallback, not yet run on the device)
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

out, fixture = sys.argv[1], sys.argv[2]
tiny = "--tiny" in sys.argv[3:]
qwen2 = "--qwen2" in sys.argv[3:]
os.makedirs(out, exist_ok=True)
if qwen2:
    T = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=2 if tiny else 28,
             num_attention_heads=12, num_key_value_heads=2, vocab_size=151936)
    V = dict(depth=4 if tiny else 32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16,
             hidden_act="quick_gelu", in_channels=3, patch_size=14, spatial_merge_size=2,
             temporal_patch_size=2, model_type="qwen2_vl")
else:
    T = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=2 if tiny else 36,
             num_attention_heads=16, num_key_value_heads=2, vocab_size=151936)
    V = dict(depth=4 if tiny else 32, hidden_size=1280, intermediate_size=3420, out_hidden_size=2048, num_heads=16,
             window_size=112, fullatt_block_indexes=[1, 3] if tiny else [7, 15, 23, 31], patch_size=14,
             spatial_merge_size=2, temporal_patch_size=2, in_channels=3, hidden_act="silu",
             tokens_per_second=2, model_type="qwen2_5_vl")
fx = json.load(open(os.path.join(fixture, "config.json")))
arch = "Qwen2VLForConditionalGeneration" if qwen2 else "Qwen2_5_VLForConditionalGeneration"
config = dict(architectures=[arch], model_type="qwen2_vl" if qwen2 else "qwen2_5_vl", **T,
              rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=128000, tie_word_embeddings=True,
              rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, hidden_act="silu",
              sliding_window=32768, use_sliding_window=False, max_window_layers=70,
              vision_config=V, image_token_id=fx["image_token_id"], video_token_id=fx["video_token_id"],
              vision_start_token_id=fx["vision_start_token_id"], vision_end_token_id=fx["vision_end_token_id"],
              bos_token_id=1, eos_token_id=3, torch_dtype="bfloat16")
json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=1)
for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
    shutil.copy(os.path.join(fixture, f), out)
proc = json.load(open(os.path.join(fixture, "processor_config.json")))["image_processor"]
proc["size"] = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
proc["min_pixels"], proc["max_pixels"] = 56 * 56, 28 * 28 * 1280
json.dump(proc, open(os.path.join(out, "preprocessor_config.json"), "w"), indent=1)

dev = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator(device=dev).manual_seed(0)
w = {}
def p(name, *shape, scale=0.02):
    w[name] = (torch.randn(shape, generator=g, device=dev, dtype=torch.float32) * scale).to(torch.bfloat16).cpu()
def ones(name, n):
    w[name] = torch.ones((n,), dtype=torch.bfloat16)
def zeros(name, n):
    w[name] = torch.zeros((n,), dtype=torch.bfloat16)

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
if qwen2:
    e, o = V["embed_dim"], V["hidden_size"]
    m = e * V["mlp_ratio"]
else:
    e, m, o = V["hidden_size"], V["intermediate_size"], V["out_hidden_size"]
p("visual.patch_embed.proj.weight", e, 3, 2, 14, 14)
for i in range(V["depth"] if qwen2 else 0):
    b = f"visual.blocks.{i}"
    ones(f"{b}.norm1.weight", e); ones(f"{b}.norm2.weight", e)
    zeros(f"{b}.norm1.bias", e); zeros(f"{b}.norm2.bias", e)
    p(f"{b}.attn.qkv.weight", 3 * e, e); p(f"{b}.attn.qkv.bias", 3 * e)
    p(f"{b}.attn.proj.weight", e, e); p(f"{b}.attn.proj.bias", e)
    p(f"{b}.mlp.fc1.weight", m, e); p(f"{b}.mlp.fc1.bias", m)
    p(f"{b}.mlp.fc2.weight", e, m); p(f"{b}.mlp.fc2.bias", e)
for i in range(0 if qwen2 else V["depth"]):
    b = f"visual.blocks.{i}"
    ones(f"{b}.norm1.weight", e); ones(f"{b}.norm2.weight", e)
    p(f"{b}.attn.qkv.weight", 3 * e, e); p(f"{b}.attn.qkv.bias", 3 * e)
    p(f"{b}.attn.proj.weight", e, e); p(f"{b}.attn.proj.bias", e)
    p(f"{b}.mlp.gate_proj.weight", m, e); p(f"{b}.mlp.gate_proj.bias", m)
    p(f"{b}.mlp.up_proj.weight", m, e); p(f"{b}.mlp.up_proj.bias", m)
    p(f"{b}.mlp.down_proj.weight", e, m); p(f"{b}.mlp.down_proj.bias", e)
ones("visual.merger.ln_q.weight", e)
if qwen2:
    zeros("visual.merger.ln_q.bias", e)
p("visual.merger.mlp.0.weight", 4 * e, 4 * e); p("visual.merger.mlp.0.bias", 4 * e)
p("visual.merger.mlp.2.weight", o, 4 * e); p("visual.merger.mlp.2.bias", o)
save_file(w, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
print("wrote", out, sum(t.numel() for t in w.values()) / 1e9, "B params")
