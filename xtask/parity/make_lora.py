"""LoRA and DoRA adapters in mlx-lm's format on the tiny parity checkpoints (dense
and 4-bit bases), with mlx-lm's logits when it loads them (`load(adapter_path=)`),
for crates/engine-llm/tests/lora.rs.

Usage: python make_lora.py PARITY_DIR OUT_DIR   (run by `cargo xtask parity-fixtures`)
Writes OUT_DIR/<base>-<kind>/{adapter_config.json, adapters.safetensors, expected.json}.
"""
import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.tuner.utils import linear_to_lora_layers

parity, out = Path(sys.argv[1]), Path(sys.argv[2])
PROMPT = [5, 17, 42, 99, 3, 250, 7, 7, 128, 64, 31, 200]
CASES = [
    # base, kind, rank, scale, keys (None: every linear), layers
    ("llama", "lora", 4, 2.0, None, 2),
    ("llama-4bit", "lora", 4, 2.0, ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"], 1),
    ("qwen2", "lora", 8, 0.5, ["self_attn.q_proj", "self_attn.k_proj"], 2),
    ("llama", "dora", 4, 2.0, ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"], 2),
]
for base, kind, rank, scale, keys, layers in CASES:
    mx.random.seed(7)
    model, _ = load(str(parity / base))
    params = {"rank": rank, "scale": scale, "dropout": 0.0}
    if keys:
        params["keys"] = keys
    model.freeze()
    linear_to_lora_layers(model, layers, params, use_dora=(kind == "dora"))
    # lora_b starts at zero: give it values so the adapter changes the output.
    trainable = dict(tree_flatten(model.trainable_parameters()))
    # DoRA's magnitude `m` starts at the base rows' norms: move it by ~10%.
    new = {
        k: (v * (1 + 0.1 * mx.random.normal(v.shape)) if k.endswith(".m") else mx.random.normal(v.shape) * 0.05).astype(v.dtype)
        for k, v in trainable.items()
    }
    d = out / f"{base}-{kind}"
    d.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(d / "adapters.safetensors"), new)
    config = {"fine_tune_type": kind, "num_layers": layers, "lora_parameters": params}
    (d / "adapter_config.json").write_text(json.dumps(config, indent=1))
    # What mlx-lm computes when it loads the adapter folder itself.
    model, _ = load(str(parity / base), adapter_path=str(d))
    logits = model(mx.array([PROMPT]))[0].astype(mx.float32)
    (d / "expected.json").write_text(json.dumps({"base": base, "prompt": PROMPT, "logits": logits.tolist()}))
    print(f"wrote {d} ({len(new)} tensors)")
