#!/usr/bin/env bash
# Prints the python of the venv that scripts/setup.sh fills with torch and transformers; exits 1 when absent.
venv="${BIK_CACHE:-$HOME/.cache/bik}/torch-venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch, transformers" >/dev/null 2>&1; then
  echo "$venv/bin/python"
else
  echo "torch venv not found at $venv (run scripts/setup.sh)" >&2
  exit 1
fi
