#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 nvcc (cached under ~/.cache/openlora) and builds with the `cuda`
# feature: kernels/*.cu -> sm_90 PTX (build.rs) embedded in the binary. No GPU or driver needed.
# Extra arguments go to cargo, e.g. `bash scripts/cuda-build.sh --release`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/cuda-env.sh
exec cargo build --features cuda "$@"
