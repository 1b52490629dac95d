#!/usr/bin/env bash
# The benches' Python venv (cmake, gguf, numpy, safetensors from PyPI) under ~/.cache/openlora; prints its path.
set -euo pipefail
venv="${OPENLORA_CACHE:-$HOME/.cache/openlora}/venv-bench"
if [ ! -x "$venv/bin/cmake" ] || ! "$venv/bin/python" -c 'import gguf, numpy, safetensors' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet cmake "setuptools>=77" setuptools-scm wheel gguf numpy safetensors >&2
fi
echo "$venv"
