#!/usr/bin/env bash
# transformers as the reference for `vramswap generate`: builds tiny seeded random-init models
# of every family and config variant vramswap implements with transformers, and compares
# prompt ids, greedy tokens (alone and batched), first-step logits and chat prompts
# (tests/hf_reference/hf_reference.py says what exactly).
#
# Usage: scripts/hf-reference.sh PYTHON
#   PYTHON: an interpreter with torch (CPU is enough), transformers >= 5 and tokenizers, e.g.
#   scripts/test.sh's target/py-venv/bin/python once torch and transformers are installed there.
#   The vramswap binary is built here (debug profile; the models are tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:?usage: scripts/hf-reference.sh PYTHON (with torch, transformers >= 5, tokenizers)}"
"$PY" -c 'import torch, transformers, tokenizers; assert int(transformers.__version__.split(".")[0]) >= 5, transformers.__version__' \
  || { echo "hf-reference: $PY lacks torch, tokenizers or transformers >= 5" >&2; exit 2; }
cargo build --quiet -p vramswap --bin vramswap
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "== transformers reference: $("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
"$PY" tests/hf_reference/hf_reference.py --vramswap target/debug/vramswap --workdir "$WORK"
