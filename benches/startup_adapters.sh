#!/usr/bin/env bash
# Start-up at scale: N local adapter folders (hard links to one demo adapter, so the page cache
# holds one copy) -> seconds from `openlora serve` start to GET /ready = 200, best of RUNS warm runs.
#   bash benches/startup_adapters.sh [N=10000] [RUNS=3] [BIN=target/debug/openlora]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n="${1:-10000}"; runs="${2:-3}"
bin="${3:-${CARGO_TARGET_DIR:-target}/debug/openlora}"
model="$(bash scripts/fetch-model.sh)"
dir="${TMPDIR:-/tmp}/openlora-startup-$n"
if [ "$(ls "$dir" 2>/dev/null | wc -l)" != "$n" ]; then
  rm -rf "$dir"; mkdir -p "$dir"
  for i in $(seq -w 1 "$n"); do
    mkdir "$dir/ad$i"
    ln adapters/pirate/adapter_config.json adapters/pirate/adapter_model.safetensors "$dir/ad$i/"
  done
fi
port=$((20000 + RANDOM % 20000))
for r in $(seq 1 "$runs"); do
  start=$(date +%s.%N)
  "$bin" serve --model "$model" --adapters-dir "$dir" --port "$port" --host 127.0.0.1 2>/tmp/openlora-startup.log &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do sleep 0.01; done
  end=$(date +%s.%N)
  n_reg=$(curl -s "http://127.0.0.1:$port/v1/models" | grep -o '"object":"model"' | wc -l)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf 'run %d: %d models, /ready after %.2f s; %s\n' "$r" "$n_reg" "$(echo "$end - $start" | bc)" \
    "$(grep -o 'registered [0-9]* adapters.*' /tmp/openlora-startup.log || true)"
done
