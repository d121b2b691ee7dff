"""Make MLX's Linux CPU build use an optimized BLAS (OpenBLAS) instead of its bundled one.

The `mlx[cpu]` wheel links a slow reference BLAS, but libmlx.so leaves
`cblas_sgemm` undefined and binds it through the normal dynamic-linker search, which looks
at the global scope first. Loading OpenBLAS with RTLD_GLOBAL *before* `import mlx.core`
therefore routes every MLX matmul and conv gemm to OpenBLAS (docs/benchmarks.md). Loading it after
the import has no effect. On macOS MLX uses Accelerate and this module does nothing.

Where the system has none and apt needs root, setup.sh unpacks Debian's OpenBLAS (and the
Fortran runtime it needs, where the system lacks one) into the virtual environment, under
`VENV_BLAS_DIR`; it is looked for there first.

Environment: GIGAMLX_BLAS=none disables the preload; GIGAMLX_BLAS=/path/lib.so picks the
library (it must export cblas_sgemm). NumPy's and SciPy's bundled OpenBLAS do not help:
their symbols are renamed (scipy_cblas_sgemm...).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from typing import NamedTuple

logger = logging.getLogger(__name__)

ENV_VAR = "GIGAMLX_BLAS"
DISABLE_VALUES = {"none", "off", "0", "false", "no"}
VENV_BLAS_DIR = "opt/openblas"  # under sys.prefix: where setup.sh unpacks OpenBLAS without root
# the libraries setup.sh may place beside it, in load order: OpenBLAS's Fortran runtime
VENV_BLAS_DEPENDENCIES = ("libquadmath.so.0", "libgfortran.so.5")


class BlasInfo(NamedTuple):
    """Which BLAS MLX uses: `name` ("openblas", "accelerate", "bundled"), its path, and why."""

    name: str
    path: str | None
    reason: str


# the one line that names the fix wherever no OpenBLAS is found (setup.sh prints the same)
FIX = "sudo apt install libopenblas0-pthread (Fedora: sudo dnf install openblas)"

_state: dict[str, BlasInfo] = {}
_handles: list[ctypes.CDLL] = []  # keep loaded libraries referenced for the process lifetime


def candidate_paths() -> list[str]:
    """OpenBLAS shared objects to try, most specific first: the one setup.sh unpacked into
    this environment, then the system's (Debian/Ubuntu, Fedora, Arch)."""
    multiarch = f"/usr/lib/{platform.machine()}-linux-gnu"
    return [
        os.path.join(sys.prefix, VENV_BLAS_DIR, "libopenblas.so.0"),
        f"{multiarch}/openblas-pthread/libopenblas.so.0",
        f"{multiarch}/libopenblas.so.0",
        f"{multiarch}/openblas-openmp/libopenblas.so.0",
        f"{multiarch}/openblas-serial/libopenblas.so.0",
        "/usr/lib64/libopenblasp.so.0",
        "/usr/lib64/libopenblas.so.0",
        "/usr/lib/libopenblas.so.0",
    ]


def _load_global(path: str) -> str | None:
    """dlopen `path` with RTLD_GLOBAL; return None on success, else the reason it failed.

    The libraries of VENV_BLAS_DEPENDENCIES found beside it are loaded first: the dynamic
    linker then resolves the library's own dependencies to them by name (nothing else would
    search that folder)."""
    try:
        for name in VENV_BLAS_DEPENDENCIES:
            beside = os.path.join(os.path.dirname(path), name)
            if os.path.exists(beside):
                _handles.append(ctypes.CDLL(beside, mode=ctypes.RTLD_GLOBAL))
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as error:
        return f"cannot load {path}: {error}"
    if not hasattr(lib, "cblas_sgemm"):
        return f"{path} does not export cblas_sgemm"
    _handles.append(lib)
    return None


def _name_of(path: str) -> str:
    return "openblas" if "openblas" in os.path.basename(path).lower() else "custom"


def _preload() -> BlasInfo:
    """The decision behind `preload_blas`, without caching."""
    if sys.platform == "darwin":
        return BlasInfo("accelerate", None, "macOS: MLX links Accelerate directly")
    choice = os.environ.get(ENV_VAR, "").strip()
    if choice.lower() in DISABLE_VALUES:
        return BlasInfo("bundled", None, f"disabled by {ENV_VAR}={choice}")
    if "mlx.core" in sys.modules:
        return BlasInfo("bundled", None, "mlx.core was imported before preload_blas()")
    paths = [choice] if choice else [p for p in candidate_paths() if os.path.exists(p)]
    failures = []
    for path in paths:
        failure = _load_global(path)
        if failure is None:
            set_blas_threads(1)
            return BlasInfo(_name_of(path), path, "preloaded with RTLD_GLOBAL")
        failures.append(failure)
    if failures:
        return BlasInfo("bundled", None, "; ".join(failures))
    return BlasInfo("bundled", None, f"no OpenBLAS found ({FIX})")


def preload_blas() -> BlasInfo:
    """Load an optimized BLAS globally so MLX binds to it; call before `import mlx.core`.

    Never raises: when nothing suitable is found, MLX keeps its bundled BLAS and the returned
    BlasInfo says why. Idempotent: later calls return the first result.
    """
    if "info" not in _state:
        info = _preload()
        _state["info"] = info
        choice = os.environ.get(ENV_VAR, "").strip()
        asked = choice and choice.lower() not in DISABLE_VALUES
        # which BLAS is in use is for `gigamlx info` and --verbose; a failed request warns
        log = logger.warning if asked and info.path is None else logger.debug
        log("BLAS for MLX: %s (%s)", info.name, info.path or info.reason)
    return _state["info"]


def set_blas_threads(count: int) -> bool:
    """Use `count` threads in the preloaded OpenBLAS, unless $OPENBLAS_NUM_THREADS says how
    many; False where no OpenBLAS was preloaded (macOS, the bundled BLAS).

    The preload asks for one, in every process: a matmul's rounding depends on how many
    threads split it, so runs (and a run and its resume) only agree bit for bit when all use
    the same count; and the fused path's only matmuls are the coarse layers' (tiny), between
    which a second thread spun in the kernel; the pure-MLX path ran as fast on one thread
    (docs/experiments.md).
    """
    if os.environ.get("OPENBLAS_NUM_THREADS"):
        return False
    for lib in _handles:
        setter = getattr(lib, "openblas_set_num_threads", None)
        if setter is not None:
            setter(int(count))
            return True
    return False


def blas_info() -> BlasInfo:
    """What `preload_blas` decided, for `gigamlx info`; says so when it was never called."""
    return _state.get("info", BlasInfo("bundled", None, "preload_blas() was not called"))
