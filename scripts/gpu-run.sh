#!/usr/bin/env bash
# The one command a GPU session runs ON the device machine (H100, CUDA 13 driver, Python with
# torch/transformers/peft, no Rust, no internet), after `bash scripts/gpu-pack.sh` here:
#   run(command="bash scripts/gpu-run.sh", carry=["gpu-carry"])
# It writes everything under $OUT (or ./gpu-out): logs, the benchmark table, device/commit/date.
# One argument picks stages (default: all): tests | engine | bench | all. If the device tool's
# 10-minute limit bites, run `tests engine` and `bench` as two calls on the warm machine.
#   1. GPU kernel tests: every kernel vs its CPU twin (tests/cuda_kernels.rs)
#   2. engine (CPU path of the same binary) vs transformers+PEFT on fixtures regenerated there
#   3. benchmarks: examples/cuda_ops_bench (openlora's kernels on an 8B-shaped decode step vs the
#      HBM roofline, with 1/100/1000 adapters) and scripts/gpu_bench.py (HF decode and
#      transformers+PEFT mixed-adapter generation on the same GPU, the peer)
#
# `--rehearse` (CI, no GPU): the device checks against the device executor's CPU twin
# (`--device candle-cpu`) with tiny shapes, built here with cargo, so the script cannot rot:
#   a. every custom op's cpu_fwd vs its f32 reference (tests/device_ops.rs)
#   b. the device executor vs transformers+PEFT and vs each request alone (candle_cpu tests)
#   c. `openlora serve --device candle-cpu` answering the openai SDK (chat, stream, adapters)
# It prints a one-screen pass/fail summary and writes summary.md + summary.json under $OUT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
if [ "${1:-}" = --rehearse ]; then
  names=() results=()
  stage() { # name, command...: runs it with its log in $out/<name>.log
    local name=$1; shift
    echo "== $name" >&2
    if "$@" >"$out/$name.log" 2>&1; then results+=(pass); else results+=(FAIL); fi
    names+=("$name")
  }
  stage a-ops cargo test --test device_ops
  stage b-engine cargo test --test reference_tiny --test engine_batching -- candle_cpu
  cargo build --bins >"$out/build.log" 2>&1
  venv="${OPENLORA_CACHE:-$HOME/.cache/openlora}/venv-ci"
  stage c-serve env OPENLORA_DEVICE=candle-cpu OPENLORA_DTYPE=f32 \
    OPENLORA_BIN="${CARGO_TARGET_DIR:-target}/debug/openlora" OPENLORA_MODEL="$(bash scripts/fetch-model.sh)" \
    "$venv/bin/python" -m pytest -q tests/python/test_openai_api.py \
    -k "chat_non_streaming_shape or chat_stream_equals_non_stream or adapter_changes_output or weighted_adapter_mix"
  status=0
  {
    echo "# gpu-run.sh --rehearse ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD), device candle-cpu)"
    echo; echo "| stage | result | log |"; echo "|---|---|---|"
    for i in "${!names[@]}"; do echo "| ${names[$i]} | ${results[$i]} | ${names[$i]}.log |"; done
  } > "$out/summary.md"
  json="{"; for i in "${!names[@]}"; do
    json+="\"${names[$i]}\": \"${results[$i]}\""; [ "$i" -lt $((${#names[@]} - 1)) ] && json+=", "
    [ "${results[$i]}" = pass ] || status=1
  done; echo "$json}" > "$out/summary.json"
  cat "$out/summary.md"
  exit $status
fi
carry=gpu-carry
[ -d "$carry" ] || { echo "no $carry/: run scripts/gpu-pack.sh first and carry it" >&2; exit 2; }
bin="$(mktemp -d)"
for f in openlora cuda_kernels reference_tiny cuda_ops_bench; do
  python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' \
    "$carry/$f.xz" "$bin/$f" && chmod +x "$bin/$f"
done
# Test binaries look for tests/fixtures under the directory they were built in.
manifest="$(cat "$carry/manifest_dir")"
if [ "$manifest" != "$PWD" ] && [ ! -e "$manifest" ]; then
  mkdir -p "$(dirname "$manifest")" && ln -s "$PWD" "$manifest"
fi
py="${PYTHON:-python3}"
stages="${*:-all}"
want() { [[ " $stages " == *" all "* || " $stages " == *" $1 "* ]]; }
status=0
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(cat "$carry/commit")"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} | tee "$out/device.txt"

if want tests; then
  echo "== 1. kernel tests (GPU vs CPU twin)"
  "$bin/cuda_kernels" --test-threads=1 2>&1 | tee "$out/cuda_kernels.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want engine; then
  echo "== 2. engine vs transformers+PEFT (fixtures regenerated on this machine)"
  "$py" tests/fixtures/make_reference.py tiny 2>&1 | tail -3
  "$bin/reference_tiny" 2>&1 | tee "$out/reference_tiny.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if want bench; then
  echo "== 3. benchmarks"
  "$bin/cuda_ops_bench" 2>&1 | tee "$out/ops_bench.md"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  "$py" scripts/gpu_bench.py --out "$out" 2>&1 | tee "$out/bench.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
echo "exit status $status; results in $out"
exit $status
