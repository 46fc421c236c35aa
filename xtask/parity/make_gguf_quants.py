"""Random blocks of every ggml type engine-core decodes, with gguf-py's own
dequantization of them (llama.cpp's reference in numpy), for the bit-exact test
crates/engine-core/tests/gguf_quant.rs.

Usage: python make_gguf_quants.py OUT_DIR   (run by `cargo xtask parity-fixtures`)
Writes OUT_DIR/<TYPE>.blocks (raw block bytes), OUT_DIR/<TYPE>.f32 (little-endian
f32) and OUT_DIR/expected.json (type -> elements).
"""
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
         "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(20261202)
expected = {}
for name in TYPES:
    qtype = T[name]
    block, nbytes = GGML_QUANT_SIZES[qtype]
    # An odd block count, and more than one row so row handling shows.
    n_blocks = 7 if block == 1 else (5 if block == 32 else 3)
    rows = []
    for _ in range(n_blocks * (64 if block == 1 else 1)):
        # Random bytes, re-drawn until the block decodes to finite values (a random
        # f16 scale is sometimes inf/NaN, whose payload need not round-trip).
        while True:
            b = rng.integers(0, 256, size=nbytes, dtype=np.uint8)
            v = dequantize(b.reshape(1, nbytes), qtype)
            if np.all(np.isfinite(v)):
                break
        rows.append(b)
    raw = np.concatenate(rows)
    elements = len(rows) * block
    ref = dequantize(raw.reshape(1, -1), qtype).astype(np.float32).reshape(-1)
    assert ref.size == elements, (name, ref.size, elements)
    (out / f"{name}.blocks").write_bytes(raw.tobytes())
    (out / f"{name}.f32").write_bytes(ref.astype("<f4").tobytes())
    expected[name] = elements
(out / "expected.json").write_text(json.dumps(expected, indent=1))
print(f"wrote {len(expected)} types to {out}")
