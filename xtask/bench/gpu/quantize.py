"""MLX affine 4-bit copy of a model folder for the GPU decode bench (same tokenizer and
prompt files): python quantize.py SRC DST [BITS] [GROUP]."""
import shutil
import sys
from pathlib import Path

from mlx_lm.utils import load_model, quantize_model, save_config, save_model

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
bits = int(sys.argv[3]) if len(sys.argv) > 3 else 4
group = int(sys.argv[4]) if len(sys.argv) > 4 else 64
model, config = load_model(src)
model, config = quantize_model(model, config, group, bits)
dst.mkdir(parents=True, exist_ok=True)
save_model(dst, model, donate_model=True)
save_config(config, dst / "config.json")
for f in src.iterdir():
    if f.suffix == ".json" and f.name != "config.json" and not f.name.startswith("model"):
        shutil.copy(f, dst / f.name)
print("wrote", dst)
