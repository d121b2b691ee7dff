"""Compile kernels/cuda/managed_alloc.cu into a shared library with nvcc.

Run `python -m gigamlx.backends.cuda_um.build [OUT_DIR]` or `make -C kernels/cuda` (both write to
kernels/cuda/build/ by default); the cuda-um backend calls `build_library` itself on first use.
Host code only, so it compiles where nvcc exists and no GPU does; running it needs a driver at
least as new as that nvcc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# the native source stays in the repository's kernels/ (native sources only; editable install)
SOURCE = Path(__file__).resolve().parents[3] / "kernels" / "cuda" / "managed_alloc.cu"
LIBRARY = "libgigamlx_um.so"
NVCC_FLAGS = ("-shared", "-Xcompiler", "-fPIC", "-O2")


class NvccNotFound(RuntimeError):
    """No nvcc on PATH, in $CUDA_HOME/bin or in /usr/local/cuda/bin."""


def find_nvcc() -> str:
    """Path of nvcc: PATH first, then $CUDA_HOME / $CUDA_PATH, then /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in filter(None, roots):
        candidate = Path(root) / "bin" / "nvcc"
        if candidate.is_file():
            return str(candidate)
    raise NvccNotFound(
        "nvcc not found on PATH, in $CUDA_HOME/bin or in /usr/local/cuda/bin; "
        "install the CUDA toolkit to build the cuda-um allocator"
    )


def build_library(out_dir: Path, nvcc: str | None = None) -> Path:
    """Compile the allocator into `out_dir/libgigamlx_um.so` unless it is newer than the source.

    Returns:
        The library's path.

    Raises:
        NvccNotFound: without nvcc.
        RuntimeError: when nvcc fails; the message carries its output.
    """
    out_dir = Path(out_dir)
    target = out_dir / LIBRARY
    if target.exists() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename: a concurrent loader never sees half a library
    partial = out_dir / f".{LIBRARY}.{os.getpid()}"
    command = [nvcc or find_nvcc(), *NVCC_FLAGS, "-o", str(partial), str(SOURCE)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    os.replace(partial, target)
    return target


if __name__ == "__main__":
    print(build_library(Path(sys.argv[1] if len(sys.argv) > 1 else SOURCE.parent / "build")))
