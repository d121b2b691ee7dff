"""Memory for the cuda-um backend: the device choice, the managed pool, migration hints, and
the CPU's readings.

Tile inputs, targets and outputs live in a `torch.cuda.MemPool` whose blocks come from
cudaMallocManaged (kernels/cuda/managed_alloc.cu, loaded as a CUDAPluggableAllocator);
activations stay in torch's ordinary device allocator. Nothing here touches CUDA unless a CUDA
device was asked for, so the CPU path runs on machines without a driver; there, memory is the
process RSS (torch keeps no CPU counters).

Pool blocks are written by the host without stream ordering. That is safe because a tile's
tensors are freed only after the tile method synchronized, so a block handed out again is idle.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import numpy as np
import torch

from gigamlx.backends.cuda_um.build import NvccNotFound, build_library
from gigamlx.core.memory import SampledPeak, current_rss_bytes, peak_rss_bytes

log = logging.getLogger(__name__)

HOST = -1  # the location id the .cu entry points read as "the CPU"
ADVISE_READ_MOSTLY = 1  # cudaMemAdviseSetReadMostly
ADVISE_UNSET_READ_MOSTLY = 2  # cudaMemAdviseUnsetReadMostly
DEVICES = ("auto", "cuda", "cpu")


def resolve_device(name: str) -> torch.device:
    """The torch device for `--device`: "auto" and "cuda" need CUDA, "cpu" always works.

    Raises:
        ValueError: for an unknown name, or a CUDA device on a machine without one; the
            message names the fix.
    """
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU or driver"
        raise ValueError(
            f"--backend cuda-um needs a CUDA GPU, and torch {torch.__version__} sees none "
            f"({why}); pass --device cpu to run the same backend on the CPU, "
            "or use --backend mlx"
        )
    return torch.device("cuda" if name == "auto" else name)


class ManagedMemory:
    """The managed pool on one GPU, with prefetch and advice on a side stream.

    Args:
        device: a CUDA device.
        limit_bytes: most managed bytes handed out; default and ceiling: the GPU's free memory
            now, so managed data never oversubscribes the device.
    """

    def __init__(self, device: torch.device, limit_bytes: int | None = None):
        self.device = device
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            path = library_path()
        except NvccNotFound as error:
            raise ValueError(f"{error}; or use --backend mlx") from error
        self.lib = _bind(ctypes.CDLL(str(path)))
        _check_gpu(self.lib, self.index, path)
        free_bytes, _ = torch.cuda.mem_get_info(self.index)
        limit = min(limit_bytes or free_bytes, free_bytes)
        self.lib.um_set_limit(limit)
        self.allocator = torch.cuda.memory.CUDAPluggableAllocator(str(path), "um_malloc", "um_free")
        self.pool = torch.cuda.MemPool(self.allocator.allocator())
        self.side = torch.cuda.Stream(device)  # migrations here overlap compute on the main one
        log.info("managed pool on %s from %s, at most %d bytes", device, path, limit)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised managed tensor (its pages are nowhere until first touched)."""
        with torch.cuda.use_mem_pool(self.pool, self.device):
            return torch.empty(shape, dtype=dtype, device=self.device)

    def empty_output(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A managed float32 tensor for the GPU to write; the block may have held an input, so
        drop its read-mostly advice (writes to read-mostly pages collapse every copy)."""
        tensor = self.empty(shape, torch.float32)
        self.advise(tensor, ADVISE_UNSET_READ_MOSTLY, self.index)
        return tensor

    def from_host(self, array: np.ndarray) -> tuple[torch.Tensor, torch.cuda.Event]:
        """Copy `array` into managed memory on the host and start moving it to the GPU.

        The host writes straight into the managed pages (no pinned staging buffer); the
        prefetch runs on the side stream. Wait on the returned event before reading the tensor.
        Read-mostly advice keeps the host copy valid, so reusing the block for the next tile
        costs no migration back.
        """
        tensor = self.empty(array.shape, _TORCH_DTYPES[np.dtype(array.dtype)])
        host_view(tensor)[...] = array
        self.advise(tensor, ADVISE_READ_MOSTLY, self.index)
        ready = torch.cuda.Event()
        with torch.cuda.stream(self.side):
            self.prefetch(tensor, self.index, self.side)
            ready.record(self.side)
        return tensor, ready

    def to_host(self, tensor: torch.Tensor) -> np.ndarray:
        """A host copy of a managed tensor, migrated in bulk after the kernels that wrote it."""
        stream = torch.cuda.current_stream(self.device)
        self.prefetch(tensor, HOST, stream)  # stream order: after the producing kernels
        stream.synchronize()  # sync point: the tile's results
        return host_view(tensor).copy()

    def prefetch(self, tensor: torch.Tensor, location: int, stream: torch.cuda.Stream) -> None:
        """cudaMemPrefetchAsync of the tensor's bytes to GPU `location` (HOST: the CPU)."""
        code = self.lib.um_prefetch(_ptr(tensor), _nbytes(tensor), location, stream.cuda_stream)
        self._check(code, "cudaMemPrefetchAsync")

    def advise(self, tensor: torch.Tensor, advice: int, location: int) -> None:
        """cudaMemAdvise on the tensor's bytes (ADVISE_* codes; location HOST is the CPU)."""
        self._check(self.lib.um_advise(_ptr(tensor), _nbytes(tensor), advice, location), "advise")

    def is_managed(self, tensor: torch.Tensor) -> bool:
        return self.lib.um_is_managed(_ptr(tensor)) == 1

    def active_bytes(self) -> int:
        return int(self.lib.um_active_bytes())

    def limit_bytes(self) -> int:
        """The most managed bytes the pool hands out (64-bit: GPUs hold more than 2 GiB)."""
        return int(self.lib.um_limit_bytes())

    def reset_peak(self) -> None:
        self.lib.um_reset_peak()

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            message = self.lib.um_error_string(code).decode()
            raise RuntimeError(f"{what} failed: {message} (cudaError {code})")


def _check_gpu(lib: ctypes.CDLL, index: int, path: Path) -> None:
    """Raise ValueError naming the fix unless the allocator can drive this GPU."""
    access = lib.um_concurrent_access(index)
    if access < 0:
        raise ValueError(
            f"the managed allocator {path} cannot use GPU {index}: "
            f"{lib.um_error_string(-access).decode()}; rebuild it with an nvcc no newer than "
            f"the driver (torch uses CUDA {torch.version.cuda}): delete {path} and put that "
            "nvcc first on PATH, or use --device cpu"
        )
    if access == 0:
        raise ValueError(
            f"GPU {index} cannot share managed memory with the host while it computes "
            "(needs concurrentManagedAccess: a Pascal or newer GPU on Linux); "
            "use --backend mlx, or --device cpu"
        )


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32}
_CTYPES = {torch.uint8: ctypes.c_uint8, torch.float32: ctypes.c_float}


def host_view(tensor: torch.Tensor) -> np.ndarray:
    """The host's numpy view of a contiguous managed tensor: no copy, same pages.

    Only safe while no kernel writes the tensor (synchronize first when one did).
    """
    if not tensor.is_contiguous():
        raise ValueError("host_view needs a contiguous tensor")
    buffer = (_CTYPES[tensor.dtype] * tensor.numel()).from_address(tensor.data_ptr())
    return np.ctypeslib.as_array(buffer).reshape(tuple(tensor.shape))


def _ptr(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def _nbytes(tensor: torch.Tensor) -> ctypes.c_size_t:
    return ctypes.c_size_t(tensor.numel() * tensor.element_size())


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the entry points' C signatures (ctypes would otherwise truncate to int)."""
    pointer, size, integer, wide = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_longlong
    signatures = {
        "um_prefetch": ([pointer, size, integer, pointer], integer),
        "um_advise": ([pointer, size, integer, integer], integer),
        "um_is_managed": ([pointer], integer),
        "um_concurrent_access": ([integer], integer),
        "um_active_bytes": ([], wide),
        "um_peak_bytes": ([], wide),
        "um_reset_peak": ([], None),
        "um_set_limit": ([wide], None),
        "um_limit_bytes": ([], wide),
        "um_error_string": ([integer], ctypes.c_char_p),
    }
    for name, (arguments, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = arguments, result
    return lib


def host_rss_bytes() -> int:
    return current_rss_bytes() or 0


def host_peak_bytes() -> int:
    """VmHWM (resettable, see `reset_host_peak`) where Linux has it; else the RSS sampled since
    the last reset (macOS), else the lifetime peak."""
    if _STATUS.exists():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _SAMPLED_PEAK.peak() or peak_rss_bytes()


def reset_host_peak() -> None:
    if _CLEAR_REFS.exists():
        _CLEAR_REFS.write_text("5")  # Linux: the peak RSS restarts from the current RSS
    else:
        _SAMPLED_PEAK.reset()


def trim_host_heap() -> None:
    """Freed tensors stay in glibc's heap and hide in the RSS; give them back to the system so
    the next peak measures what a tile really needs."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    """glibc, for malloc_trim; None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim"):
        return None
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_SAMPLED_PEAK = SampledPeak()
_LIBC = _load_libc()


def library_path() -> Path:
    """Build (once, into $GIGAMLX_CACHE/cuda or ~/.cache/gigamlx/cuda) the allocator library."""
    root = os.environ.get("GIGAMLX_CACHE") or Path.home() / ".cache" / "gigamlx"
    return build_library(Path(root) / "cuda")
