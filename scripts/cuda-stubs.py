"""Writes link-time stub libraries for the CUDA libraries candle's `cuda` feature links (cudarc
`dynamic-linking`), so the cuda build links on a machine with no GPU and no driver: one shared
library per library, with the real SONAME and an empty function for every function cudarc's
bindings declare. The binary built against them needs the real libraries at start (GPU machines).
Usage: python3 cuda-stubs.py <cudarc source dir> <output dir>"""
import pathlib
import re
import subprocess
import sys

# cudarc module -> (file name, SONAME).
LIBS = {
    "driver": ("libcuda.so", "libcuda.so.1"),
    "cublas": ("libcublas.so", "libcublas.so.13"),
    "cublaslt": ("libcublasLt.so", "libcublasLt.so.13"),
    "curand": ("libcurand.so", "libcurand.so.10"),
    "nvrtc": ("libnvrtc.so", "libnvrtc.so.13"),
}

src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for module, (name, soname) in LIBS.items():
    text = (src / "src" / module / "sys" / "mod.rs").read_text()
    names = sorted(set(re.findall(r"pub unsafe fn (\w+)\(", text)) - {"is_culib_present", "culib"})
    c = out / f"{module}.c"
    c.write_text("".join(f"void {n}(void) {{}}\n" for n in names))
    subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(out / name), str(c)], check=True)
    (out / soname).unlink(missing_ok=True)
    (out / soname).symlink_to(name)
    print(f"{name} ({soname}): {len(names)} symbols", file=sys.stderr)
