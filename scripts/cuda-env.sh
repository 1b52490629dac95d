# Source me: installs the pinned CUDA 13.0 nvcc from PyPI into ~/.cache/openlora/venv-cuda (once;
# reinstalls only when the pin list changes) and exports CUDA_ROOT/CUDA_PATH/PATH for build.rs.
# The 13.0 series must match the GPU machine's driver (CUDA 13.0): an unpinned install pulls a
# newer nvcc whose PTX that driver cannot load.
_ol_cache="${OPENLORA_CACHE:-$HOME/.cache/openlora}"
_ol_venv="$_ol_cache/venv-cuda"
_ol_pins="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88"
if [ "$(cat "$_ol_venv/.pins" 2>/dev/null)" != "$_ol_pins" ]; then
  echo "installing nvcc ($_ol_pins) into $_ol_venv" >&2
  mkdir -p "$_ol_cache"
  [ -x "$_ol_venv/bin/python" ] || python3 -m venv "$_ol_venv"
  # shellcheck disable=SC2086
  "$_ol_venv/bin/pip" install -q $_ol_pins
  echo "$_ol_pins" > "$_ol_venv/.pins"
fi
_ol_cu="$("$_ol_venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
export CUDA_ROOT="$_ol_cu" CUDA_PATH="$_ol_cu" PATH="$_ol_cu/bin:$PATH"
# candle-kernels compiles for this compute capability when no GPU is present (90: H100/H200).
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# Link-time stubs (cudarc searches $CUDA_ROOT/lib/stubs): candle links libcuda, cublas, cublasLt,
# curand and nvrtc; PyPI has no libcuda stub and libcudart.so.13 without its unversioned symlink.
_ol_cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1)"
if [ -n "$_ol_cudarc" ] && [ ! -e "$_ol_cu/lib/stubs/libcuda.so.1" ]; then
  python3 "$(dirname "${BASH_SOURCE[0]}")/cuda-stubs.py" "$_ol_cudarc" "$_ol_cu/lib/stubs"
fi
[ -e "$_ol_cu/lib/libcudart.so" ] || ln -s libcudart.so.13 "$_ol_cu/lib/libcudart.so"
"$_ol_cu/bin/nvcc" --version | grep -q "release 13.0" || { echo "nvcc at $_ol_cu is not CUDA 13.0" >&2; return 1 2>/dev/null || exit 1; }
unset _ol_cache _ol_venv _ol_pins _ol_cu _ol_cudarc
