#!/usr/bin/env bash
# Builds, here (no GPU needed), everything the device machine runs, and packs it into gpu-carry/
# (stripped, xz-compressed, checked under the device tool's 64 MiB; the device has no Rust and no
# internet):
#   openlora         the server, --features cuda (release unless PROFILE=dev)
#   cuda_ops         tests/cuda_ops.rs: every custom op's cuda_fwd vs its cpu_fwd, f32/bf16/f16
#   reference_tiny   tests/reference_tiny.rs: each executor vs transformers+PEFT (its `cuda` tests)
#   engine_batching  tests/engine_batching.rs: mixed-adapter batches == each row alone (`cuda`)
#   wheels/          the openai SDK, pytest and their dependencies for CPython 3.10-3.12 (stage c)
# Then, on the device machine:  bash scripts/gpu-run.sh   (carry: ["gpu-carry"])
# A release cuda build from scratch takes long here (candle-kernels' PTX); CARGO_TARGET_DIR keeps it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
profile="${PROFILE:-release}"
out=gpu-carry
bins=(openlora cuda_ops reference_tiny engine_batching)
rm -rf "$out" && mkdir -p "$out/wheels"
cargo fetch
source scripts/cuda-env.sh
cargo build --profile "$profile" --features cuda --bin openlora
target="${CARGO_TARGET_DIR:-target}"
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
cp "$target/$dir/openlora" "$out/openlora"
cargo test --profile "$profile" --features cuda --no-run --test cuda_ops --test reference_tiny \
  --test engine_batching --message-format=json \
  | jq -r 'select(.reason == "compiler-artifact" and .executable != null and .target.kind == ["test"])
           | "\(.target.name) \(.executable)"' \
  | while read -r name exe; do cp "$exe" "$out/$name"; done
for v in 3.10 3.11 3.12; do
  python3 -m pip download -q --only-binary=:all: --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --python-version "$v" -d "$out/wheels" \
    "$(grep '^openai==' tests/python/requirements.txt)" "$(grep '^pytest==' tests/python/requirements.txt)" \
    "$(grep '^httpx==' tests/python/requirements.txt)"
done
# The test binaries find tests/fixtures through the manifest dir compiled into them.
pwd > "$out/manifest_dir"
git rev-parse HEAD > "$out/commit"
for f in "${bins[@]}"; do
  [ -f "$out/$f" ] || { echo "missing $out/$f" >&2; exit 1; }
  strip "$out/$f"
  xz -T0 -6 "$out/$f"
done
bytes=$(du -sb "$out" | cut -f1)
echo "gpu-carry: $((bytes >> 20)) MiB"
[ "$bytes" -lt $((64 << 20)) ] || { echo "gpu-carry is over the device tool's 64 MiB" >&2; exit 1; }
echo "now, on the device machine: bash scripts/gpu-run.sh   (carry: [\"$out\"])"
