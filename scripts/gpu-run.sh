#!/usr/bin/env bash
# The one command a GPU session runs ON the device machine (H100, CUDA 13 driver, Python with
# torch/transformers/peft, no Rust, no internet), after `bash scripts/gpu-pack.sh` here:
#   run(command="bash scripts/gpu-run.sh", carry=["gpu-carry"])
# Stages (arguments pick some; default all), each logged to $OUT/<stage>.log:
#   a-ops     every custom op's cuda_fwd vs its cpu_fwd in f32/bf16/f16 (tests/cuda_ops.rs)
#   b-engine  the device executor on --device cuda vs transformers+PEFT fixtures regenerated here
#             (exact greedy tokens, f32) and mixed-adapter batches == each row alone
#             (the `cuda` tests of reference_tiny and engine_batching)
#   c-serve   `openlora serve --device cuda` answering the openai SDK (chat, stream, adapters) on
#             $OPENLORA_MODEL (default: the tiny fixture model; the demo GGUF exceeds the carry)
#   d-bench   scripts/gpu_bench.py: HBM roofline of an 8B-shaped decode step, HF decode times,
#             transformers+PEFT mixed-adapter throughput (the peer), adapter page-in floor
# It prints a one-screen pass/fail summary first and writes summary.md + summary.json under $OUT.
#
# `--rehearse` (CI, no GPU): the same stages a-c against the device executor's CPU twin
# (`--device candle-cpu`) with tiny shapes, built here with cargo, so the script cannot rot:
#   a. every custom op's cpu_fwd vs its f32 reference (tests/device_ops.rs), and tests/cuda_ops.rs
#      compiled into the cuda build by scripts/test.sh
#   b. the device executor vs transformers+PEFT and vs each request alone (candle_cpu tests)
#   c. `openlora serve --device candle-cpu` answering the openai SDK (chat, stream, adapters)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
names=() results=()
stage() { # name, command...: runs it with its log in $out/<name>.log
  local name=$1; shift
  echo "== $name" >&2
  if "$@" >"$out/$name.log" 2>&1; then results+=(pass); else results+=(FAIL); fi
  names+=("$name")
}
summarize() { # title: summary.md + summary.json under $out, the table on screen; exits
  local status=0 i json="{"
  {
    echo "# gpu-run.sh ($(date -u +%FT%TZ), $1)"
    echo; echo "| stage | result | log |"; echo "|---|---|---|"
    for i in "${!names[@]}"; do echo "| ${names[$i]} | ${results[$i]} | ${names[$i]}.log |"; done
  } > "$out/summary.md"
  for i in "${!names[@]}"; do
    json+="\"${names[$i]}\": \"${results[$i]}\""; [ "$i" -lt $((${#names[@]} - 1)) ] && json+=", "
    [ "${results[$i]}" = pass ] || status=1
  done; echo "$json}" > "$out/summary.json"
  cat "$out/summary.md"
  exit $status
}
sdk_tests="chat_non_streaming_shape or chat_stream_equals_non_stream or adapter_changes_output or weighted_adapter_mix"
if [ "${1:-}" = --rehearse ]; then
  stage a-ops cargo test --test device_ops
  stage b-engine cargo test --test reference_tiny --test engine_batching -- candle_cpu
  cargo build --bins >"$out/build.log" 2>&1
  venv="${OPENLORA_CACHE:-$HOME/.cache/openlora}/venv-ci"
  stage c-serve env OPENLORA_DEVICE=candle-cpu OPENLORA_DTYPE=f32 \
    OPENLORA_BIN="${CARGO_TARGET_DIR:-target}/debug/openlora" OPENLORA_MODEL="$(bash scripts/fetch-model.sh)" \
    "$venv/bin/python" -m pytest -q tests/python/test_openai_api.py \
    -k "$sdk_tests"
  summarize "device candle-cpu (rehearsal), commit $(git rev-parse --short HEAD)"
fi
carry=gpu-carry
[ -d "$carry" ] || { echo "no $carry/: run scripts/gpu-pack.sh first and carry it" >&2; exit 2; }
bin="$(mktemp -d)"
for f in openlora cuda_ops reference_tiny engine_batching; do
  python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' \
    "$carry/$f.xz" "$bin/$f" && chmod +x "$bin/$f"
done
# Test binaries look for tests/fixtures under the directory they were built in.
manifest="$(cat "$carry/manifest_dir")"
if [ "$manifest" != "$PWD" ] && [ ! -e "$manifest" ]; then
  mkdir -p "$(dirname "$manifest")" && ln -s "$PWD" "$manifest"
fi
py="${PYTHON:-python3}"
# The cuda build links the CUDA libraries (candle's backend): libcuda.so.1 is the driver's; cuBLAS,
# cuBLASLt, cuRAND, NVRTC and the runtime come from the torch install's nvidia/* packages.
nv_libs="$("$py" - <<'PY'
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
dirs = set()
for root in nvidia.__path__:
    for pat in ("libcublas.so.*", "libcublasLt.so.*", "libcurand.so.*", "libnvrtc.so.*", "libcudart.so.*"):
        dirs.update(os.path.dirname(f) for f in glob.glob(os.path.join(root, "**", pat), recursive=True))
print(":".join(sorted(dirs)))
PY
)"
export LD_LIBRARY_PATH="$nv_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
stages="${*:-all}"
want() { [[ " $stages " == *" all "* || " $stages " == *" $1 "* ]]; }
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(cat "$carry/commit")"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} > "$out/device.txt" 2>&1
# The SDK and pytest from the packed wheels (the device has no internet).
"$py" -m pip install -q --no-index --find-links "$carry/wheels" openai pytest httpx >"$out/pip.log" 2>&1
b_engine() {
  "$py" tests/fixtures/make_reference.py tiny | tail -3 && "$bin/reference_tiny" cuda --test-threads=1 \
    && "$bin/engine_batching" cuda --test-threads=1
}
want a-ops && stage a-ops "$bin/cuda_ops" --test-threads=1 --nocapture
want b-engine && stage b-engine b_engine
want c-serve && stage c-serve env OPENLORA_DEVICE=cuda OPENLORA_BIN="$bin/openlora" \
  OPENLORA_MODEL="${OPENLORA_MODEL:-$PWD/tests/fixtures/tiny/model}" \
  "$py" -m pytest -q tests/python/test_openai_api.py -k "$sdk_tests"
want d-bench && stage d-bench "$py" scripts/gpu_bench.py --out "$out"
summarize "$(tr '\n' ' ' < "$out/device.txt")"
