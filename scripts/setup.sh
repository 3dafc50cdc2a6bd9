#!/usr/bin/env bash
# Installs what bik needs to build and test, from Debian packages (and PyPI for the plot/Python parts).
# Safe to run repeatedly: it installs only what is missing.
set -euo pipefail

debs=(build-essential cmake ninja-build pkg-config git libgtest-dev libgmock-dev libopenblas-dev
      nlohmann-json3-dev python3 python3-pip)
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

if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: CUDA toolkit found: the CUDA backend will be built"
else
  echo "setup: no CUDA toolkit: CPU backend only (GPU tests will skip)"
fi
