#!/usr/bin/env bash
# Builds, here (no GPU needed), everything the device machine runs, and packs it into gpu-carry/
# (stripped, xz-compressed; the device tool carries at most 64 MiB and the device has no Rust):
#   openlora        the binary, --features cuda
#   cuda_kernels    tests/cuda_kernels.rs (every kernel vs its CPU twin)
#   reference_tiny  tests/reference_tiny.rs (engine vs transformers+PEFT fixtures)
#   cuda_ops_bench  examples/cuda_ops_bench.rs (8B-shaped decode-step op benchmark)
# Then run on the device machine:  bash scripts/gpu-run.sh   (carry: gpu-carry)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/cuda-env.sh
out=gpu-carry
rm -rf "$out" && mkdir -p "$out"
cargo build --features cuda --bin openlora --example cuda_ops_bench
target="${CARGO_TARGET_DIR:-target}"
cp "$target/debug/openlora" "$out/openlora"
cp "$target/debug/examples/cuda_ops_bench" "$out/cuda_ops_bench"
cargo test --features cuda --no-run --test cuda_kernels --test reference_tiny --message-format=json \
  | jq -r 'select(.reason == "compiler-artifact" and .executable != null and .target.kind == ["test"])
           | "\(.target.name) \(.executable)"' \
  | while read -r name exe; do cp "$exe" "$out/$name"; done
# The test binaries find tests/fixtures through the manifest dir compiled into them.
pwd > "$out/manifest_dir"
git rev-parse HEAD > "$out/commit"
for f in openlora cuda_kernels reference_tiny cuda_ops_bench; do
  [ -f "$out/$f" ] || { echo "missing $out/$f" >&2; exit 1; }
  strip "$out/$f"
  xz -T0 -6 "$out/$f"
done
du -ch "$out"/* | tail -1
echo "now, on the device machine: bash scripts/gpu-run.sh   (carry: [\"$out\"])"
