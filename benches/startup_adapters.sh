#!/usr/bin/env bash
# Start-up at scale: N local adapter folders (hard links to one demo adapter, so the page cache
# holds one copy) -> seconds from `openlora serve` start to GET /ready = 200, RUNS warm runs, each next
# to a run with no adapters (the model's own start-up, on the same loaded machine at the same time).
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
empty="${TMPDIR:-/tmp}/openlora-startup-0"; mkdir -p "$empty"
port=$((20000 + RANDOM % 20000))
# ready_after DIR: seconds to /ready; leaves the model count in /tmp/openlora-startup.models.
ready_after() {
  local start end pid
  start=$(date +%s.%N)
  "$bin" serve --model "$model" --adapters-dir "$1" --port "$port" --host 127.0.0.1 2>/tmp/openlora-startup.log &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do sleep 0.01; done
  end=$(date +%s.%N)
  curl -s "http://127.0.0.1:$port/v1/models" | grep -o '"object":"model"' | wc -l >/tmp/openlora-startup.models
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$end - $start" | bc
}
for r in $(seq 1 "$runs"); do
  base=$(ready_after "$empty")
  t=$(ready_after "$dir"); n_reg=$(cat /tmp/openlora-startup.models)
  printf 'run %d: no adapters /ready after %.2f s; %d models, /ready after %.2f s; %s\n' "$r" "$base" \
    "$n_reg" "$t" "$(grep -o 'registered [0-9]* adapters.*' /tmp/openlora-startup.log || true)"
done
grep -o 'validated [0-9]* adapters.*' /tmp/openlora-startup.log || true
