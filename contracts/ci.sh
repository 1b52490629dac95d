#!/usr/bin/env bash
# Contracts CI: install pinned tools (npm ci, skipped when node_modules matches package-lock.json),
# build, test, print the gas report. Idempotent; `.ci/run` calls `bash contracts/ci.sh`.
#   bash contracts/ci.sh          install + build + test (+ gas report)
#   bash contracts/ci.sh install  install only
#   bash contracts/ci.sh build    install + build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

stamp=node_modules/.openlora-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
  echo "$want" > "$stamp"
fi
source ./env.sh
[[ "${1:-}" == install ]] && exit 0

forge build
[[ "${1:-}" == build ]] && exit 0

# ABI/bytecode committed for the Rust crate (contracts/abi/) must match this build.
node scripts/export-abi.js --check

forge test --gas-report
