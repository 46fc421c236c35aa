"""A tiny random Llama (transformers) with PEFT LoRA adapters on it, and
transformers + PEFT's logits, for crates/engine-llm/tests/lora.rs. Needs torch,
transformers 5.17 and peft 0.21.2 (`cargo xtask torch-fixtures`); the outputs are
committed (a few hundred KB), so neither CI nor setup installs torch.

Usage: python make_peft.py OUT_DIR
Writes OUT_DIR/peft/base (config.json, model.safetensors), OUT_DIR/peft/<case>
(adapter_config.json, adapter_model.safetensors, expected.json).
"""
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

out = Path(sys.argv[1]) / "peft"
PROMPT = [5, 17, 42, 99, 3, 250, 7, 7, 128, 64, 31, 200]
torch.manual_seed(0)
cfg = LlamaConfig(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=256, max_position_embeddings=512, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=False,
)
LlamaForCausalLM(cfg).eval().save_pretrained(out / "base", safe_serialization=True)
CASES = {
    "lora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    "rslora": dict(r=8, lora_alpha=4, use_rslora=True,
                   target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj"]),
    "dora": dict(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "down_proj"]),
}
for name, kw in CASES.items():
    torch.manual_seed(1)
    model = LlamaForCausalLM.from_pretrained(out / "base", dtype=torch.float32).eval()
    peft_model = get_peft_model(model, LoraConfig(lora_dropout=0.0, bias="none", **kw))
    with torch.no_grad():
        # lora_B starts at zero: give it values so the adapter changes the output.
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
            elif "lora_magnitude_vector" in n:
                # DoRA's magnitude starts at the base rows' norms: move it by ~10%.
                p.mul_(1 + 0.1 * torch.randn_like(p))
        logits = peft_model(torch.tensor([PROMPT])).logits[0].float()
    peft_model.save_pretrained(out / name)
    (out / name / "expected.json").write_text(json.dumps({"prompt": PROMPT, "logits": logits.tolist()}))
    print(f"wrote {out / name}")
