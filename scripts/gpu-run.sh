#!/usr/bin/env bash
# The one command a GPU session runs ON the device machine (H100/H200, CUDA 13 driver, python3
# with torch/transformers/peft, no Rust, no internet), after `bash scripts/gpu-pack.sh` here:
#   run(command="bash scripts/gpu-run.sh", carry=["gpu-carry"], timeout_s=540)
# Every stage has its own time limit, all inside GPU_RUN_BUDGET seconds (default 450: the whole
# run stays under 8 minutes on an H100); a stage left without time is reported, not run.
#   a-ops      every custom op's cuda_fwd vs its cpu_fwd in f32/bf16/f16 (tests/cuda_ops.rs)
#   b-engine   `openlora compare-devices`: --device cuda vs the CPU f32 executor (same binary) on
#              the tiny fixture model + its PEFT adapters (f32), and on a random SmolLM2-135M-shaped
#              Llama made here by transformers (seeded) with random PEFT adapters made by peft and
#              the demo adapters (adapters/): greedy tokens of the base and of a 36-way mixed batch
#              equal in f32; in bf16 the first divergence and the logit error are reported
#              (the demo GGUF, 94 MB, does not fit the device tool's 64 MiB carry)
#   c-serve    `openlora serve --device cuda` on that random model (SmolLM2 tokenizer, ChatML)
#              answering the openai SDK from the packed wheels (chat, stream, adapters, a mix)
#   d-bench    `openlora bench-device`: Llama-3-8B shape, random bf16 weights made on the GPU:
#              decode at batch 1/32/128 vs the roofline, 0/1/100/1000 Zipf adapters, page-in p50
#   d-peer     scripts/gpu_bench.py peer: the same model in transformers (+PEFT) on the same GPU
#   targets    scripts/gpu_bench.py targets: pass/fail per target (>= 85% roofline at batch 1,
#              1000 adapters >= 95% of none, >= 30x PEFT, page-in <= 5 ms p50)
# Prints a one-screen summary (the pass/fail table of the stages first, then the targets and the
# device comparisons, then the last lines of each failed stage's log); writes $OUT/summary.md, $OUT/summary.json and $OUT/detail.tar.gz (every log and
# JSON: the device tool returns at most 8 files). Exit 0 only when every stage and target passed.
#
# `--rehearse` (CI, no GPU): the same stages on the device executor's CPU twin
# (`--device candle-cpu`, f32) with tiny shapes, built here with cargo, so the script cannot rot.
# Twin figures are no GPU claims: targets are printed but not judged.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
detail="$out/detail"
rm -rf "$detail" && mkdir -p "$detail"
budget="${GPU_RUN_BUDGET:-450}"
t0=$SECONDS
names=() results=() secs=()
export detail
stage() { # name, limit_s, command...: runs it under min(limit, budget left), log in $detail/<name>.log
  local name=$1 limit=$2 left rc s r
  shift 2
  # The last 15 s stay for the targets stage (a second or two) and the summary.
  local reserve=15
  [ "$name" = targets ] && reserve=0
  left=$((budget - (SECONDS - t0) - reserve))
  [ "$limit" -gt "$left" ] && limit=$left
  names+=("$name")
  if [ "$limit" -lt 10 ]; then
    results+=("SKIPPED (budget spent)") secs+=(0)
    return
  fi
  echo "== $name (limit ${limit}s)" >&2
  s=$SECONDS
  timeout -k 10 "$limit" "$@" >"$detail/$name.log" 2>&1
  rc=$?
  case $rc in
    0) r=pass ;;
    124 | 137) r="TIMEOUT (${limit}s)" ;;
    *) r="FAIL (exit $rc)" ;;
  esac
  results+=("$r") secs+=($((SECONDS - s)))
}
summarize() { # title: summary.md + summary.json (scripts/gpu_summary.py), failed logs' tails; exits
  local status=0 i args=()
  for i in "${!names[@]}"; do
    args+=("${names[$i]}" "${results[$i]}" "${secs[$i]}")
    [ "${results[$i]}" = pass ] || status=1
  done
  python3 scripts/gpu_summary.py "$out" "$detail" "$1" "$budget" "$((SECONDS - t0))" "${args[@]}" || status=1
  for i in "${!names[@]}"; do
    if [ "${results[$i]}" != pass ] && [ -f "$detail/${names[$i]}.log" ]; then
      echo
      echo "--- ${names[$i]}: the last lines of its log"
      tail -n 15 "$detail/${names[$i]}.log"
    fi
  done
  tar -czf "$out/detail.tar.gz" -C "$out" detail && rm -rf "$detail"
  exit $status
}
sdk_tests="chat_non_streaming_shape or chat_stream_equals_non_stream or adapter_changes_output or weighted_adapter_mix"
tiny="tests/fixtures/tiny"
tiny_adapters=(--adapter "a4=$tiny/adapters/a4" --adapter "a8=$tiny/adapters/a8" --adapter "a16=$tiny/adapters/a16")

if [ "${1:-}" = --rehearse ]; then
  target="${CARGO_TARGET_DIR:-target}"
  bin="$target/debug/openlora"
  cargo build --bins >"$detail/build.log" 2>&1 || { echo "cargo build failed: $detail/build.log" >&2; exit 1; }
  t0=$SECONDS # the budget is the stages' (the device machine builds nothing)
  stage a-ops 600 cargo test --test device_ops
  stage b-engine 300 "$bin" compare-devices --model "$tiny/model" "${tiny_adapters[@]}" \
    --device candle-cpu --dtype f32 --out "$detail/compare_tiny_f32.json"
  venv="${OPENLORA_CACHE:-$HOME/.cache/openlora}/venv-ci"
  stage c-serve 300 env OPENLORA_DEVICE=candle-cpu OPENLORA_DTYPE=f32 OPENLORA_BIN="$bin" \
    OPENLORA_MODEL="$(bash scripts/fetch-model.sh)" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python/test_openai_api.py -k "$sdk_tests"
  stage d-bench 120 "$bin" bench-device --device candle-cpu --shape tiny --batches 1,4 \
    --adapters 1,10,100 --adapter-batches 8 --slots 8 --ctx 64 --steps 8 --lifetime 8 --page-ins 4 \
    --out "$detail/bench_device.json"
  stage targets 30 python3 scripts/gpu_bench.py targets --rehearse --openlora "$detail/bench_device.json" \
    --out "$detail"
  summarize "device candle-cpu (rehearsal, no GPU), commit $(git rev-parse --short HEAD), $(date -u +%FT%TZ)"
fi

carry=gpu-carry
[ -d "$carry" ] || { echo "no $carry/: run scripts/gpu-pack.sh first and carry it" >&2; exit 2; }
bin="$(mktemp -d)"
tar -xJf "$carry/bins.tar.xz" -C "$bin" || { echo "cannot unpack $carry/bins.tar.xz" >&2; exit 2; }
# cuda_ops finds tests/fixtures under the directory it was built in.
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
} >"$detail/device.txt" 2>&1
# The openai SDK from the packed wheels (the device has no internet), beside the image's packages.
site="$(mktemp -d)"
"$py" -m pip install -q --no-index --no-deps --target "$site" "$carry"/wheels/*.whl >"$detail/pip.log" 2>&1
# Only stage c puts them on its path: the torch stages keep the image's own packages.
sdk_path="$site${PYTHONPATH:+:$PYTHONPATH}"
work="$(mktemp -d)"
export bin py work tiny
b_engine() {
  set -e
  local rand="$work/rand" ads=() a
  "$bin/openlora" compare-devices --model "$tiny/model" --adapter "a4=$tiny/adapters/a4" \
    --adapter "a8=$tiny/adapters/a8" --adapter "a16=$tiny/adapters/a16" --device cuda --dtype f32 \
    --out "$detail/compare_tiny_f32.json"
  "$py" scripts/make_random_llama.py "$rand" --shape smollm2 --seed 0 \
    --tokenizer tests/fixtures/tokenizer/smollm2_tokenizer.json
  for a in "$rand"/adapters/* adapters/*/; do
    if [ -f "$a/adapter_config.json" ]; then ads+=(--adapter "$(basename "$a")=$a"); fi
  done
  # bf16 first: it reports and never fails, so the f32 verdict is the stage's exit status.
  "$bin/openlora" compare-devices --model "$rand/model" "${ads[@]}" --device cuda --dtype bf16 \
    --out "$detail/compare_random_bf16.json" || true
  "$bin/openlora" compare-devices --model "$rand/model" "${ads[@]}" --device cuda --dtype f32 \
    --out "$detail/compare_random_f32.json"
}
a_ops() { # the cuda tests return early, printing "skipped: ...", where no GPU answers: a failure here
  local log rc
  log="$("$bin/cuda_ops" --test-threads=1 --nocapture 2>&1)"
  rc=$?
  echo "$log"
  if grep -q "skipped:" <<<"$log"; then
    echo "a GPU test skipped itself: no GPU answered" >&2
    return 1
  fi
  return $rc
}
export -f a_ops b_engine
want a-ops && stage a-ops 90 bash -c a_ops
want b-engine && stage b-engine 150 bash -c b_engine
# Stage c serves the random model b made (it needs b); the demo adapters are SmolLM2-shaped.
want c-serve && stage c-serve 90 env PYTHONPATH="$sdk_path" OPENLORA_DEVICE=cuda OPENLORA_BIN="$bin/openlora" \
  OPENLORA_MODEL="$work/rand/model" "$py" -m pytest -q -p no:cacheprovider \
  tests/python/test_openai_api.py -k "$sdk_tests"
want d-bench && stage d-bench 120 "$bin/openlora" bench-device --device cuda --shape llama3-8b \
  --out "$detail/bench_device.json"
want d-peer && stage d-peer 150 "$py" scripts/gpu_bench.py peer --out "$detail"
want targets && stage targets 20 "$py" scripts/gpu_bench.py targets --openlora "$detail/bench_device.json" \
  --peer "$detail/peer.json" --out "$detail"
summarize "$(tr '\n' ' ' <"$detail/device.txt")"
