#!/usr/bin/env bash
# Builds, here (no GPU needed), everything the device machine runs, and packs it into gpu-carry/
# (the device has no Rust and no internet):
#   bins.tar.xz   stripped, one solid xz archive of
#                   openlora   the server --features cuda (bench-device, compare-devices, serve)
#                   cuda_ops   tests/cuda_ops.rs: every custom op's cuda_fwd vs its cpu_fwd
#   wheels/       the openai SDK and its dependencies for the device's CPython 3.12 (stage c)
#   manifest_dir, commit
# The device tool carries the working tree AND gpu-carry within 64 MiB: the script checks both.
# Then, on the device machine:  bash scripts/gpu-run.sh   (carry: ["gpu-carry"])
# PROFILE=dev by default: the dev profile is opt-level 3 here (Cargo.toml), and CI's cuda build
# is already that profile, so packing reuses it; PROFILE=release recompiles everything, candle's
# CUDA kernels included (about an hour on a loaded 2-core machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
profile="${PROFILE:-dev}"
out=gpu-carry
rm -rf "$out" && mkdir -p "$out/wheels"
cargo fetch
source scripts/cuda-env.sh
target="${CARGO_TARGET_DIR:-target}"
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cargo build --profile "$profile" --features cuda --bin openlora
cp "$target/$dir/openlora" "$stage/openlora"
cargo test --profile "$profile" --features cuda --no-run --test cuda_ops --message-format=json \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' \
  | while read -r exe; do cp "$exe" "$stage/cuda_ops"; done
for f in openlora cuda_ops; do
  [ -f "$stage/$f" ] || { echo "missing $f" >&2; exit 1; }
  strip "$stage/$f"
done
# One solid archive with a dictionary spanning both binaries (they share most of their code).
tar -cf - -C "$stage" openlora cuda_ops | xz -T1 --lzma2=preset=6,dict=128MiB > "$out/bins.tar.xz"
python3 -m pip download -q --only-binary=:all: --implementation cp --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out/wheels" "$(grep '^openai==' tests/python/requirements.txt)" \
  "$(grep '^httpx==' tests/python/requirements.txt)"
# cuda_ops finds tests/fixtures through the manifest dir compiled into it.
pwd > "$out/manifest_dir"
git rev-parse HEAD > "$out/commit"
# The unpacked server starts (against the link stubs: no GPU, no driver) and knows stage b-d's verbs.
stubs="$CUDA_ROOT/lib/stubs:$CUDA_ROOT/lib"
tar -xJf "$out/bins.tar.xz" -C "$stage" openlora
for verb in bench-device compare-devices serve; do
  LD_LIBRARY_PATH="$stubs" "$stage/openlora" "$verb" --help >/dev/null \
    || { echo "packed openlora cannot run '$verb --help'" >&2; exit 1; }
done
carry=$(du -sb "$out" | cut -f1)
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "gpu-carry: $((carry >> 20)) MiB; with the working tree that travels: $(((carry + tree) >> 20)) MiB of 64"
[ $((carry + tree)) -lt $((64 << 20)) ] || { echo "over the device tool's 64 MiB" >&2; exit 1; }
echo "now, on the device machine: bash scripts/gpu-run.sh   (carry: [\"$out\"])"
