"""SmolLM2 requantized by llama.cpp's own quantizer (the `cyllama` wheel's
`model_quantize`) to Q4_K_M, Q5_K_M, Q6_K and Q8_0, and each of those files
dequantized back to F32 by gguf-py (`gguf.quants.dequantize`), for
crates/engine-llm/tests/kquants.rs.

Usage: python make_kquants.py SRC.gguf OUT_DIR   (run by scripts/setup.sh)
Writes OUT_DIR/SmolLM2-135M-Instruct.<TYPE>.gguf and OUT_DIR/SmolLM2-135M-Instruct.<TYPE>.f32.gguf.
SmolLM2's 576-wide rows are not multiples of 256, so llama.cpp mixes Q5_0/Q5_1/Q8_0 into the K files.
"""
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf.quants import dequantize
import cyllama.llama.llama_cpp as llama

FTYPES = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7}


def to_f32(src: Path, dst: Path):
    """A copy of `src` with every tensor dequantized to F32 (metadata kept)."""
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    w.add_file_type(gguf.LlamaFileType.ALL_F32) if "general.file_type" not in r.fields else None
    for t in r.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
stem = src.name.split(".")[0]
for name, ftype in FTYPES.items():
    q = out / f"{stem}.{name}.gguf"
    if not q.exists():
        p = llama.LlamaModelQuantizeParams()
        p.ftype = ftype
        p.allow_requantize = True
        p.nthread = 2
        tmp = q.with_suffix(".part")
        llama.model_quantize(str(src), str(tmp), p)
        tmp.rename(q)
    f = out / f"{stem}.{name}.f32.gguf"
    if not f.exists():
        tmp = f.with_suffix(".part")
        to_f32(q, tmp)
        tmp.rename(f)
    types = sorted({t.tensor_type.name for t in gguf.GGUFReader(q).tensors})
    print(f"wrote {q.name} ({', '.join(types)}) and {f.name}")
