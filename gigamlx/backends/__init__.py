"""Engines behind one interface (see base.py). Engines are imported only when asked for."""

from __future__ import annotations

import os

from gigamlx.backends.base import Backend

BACKENDS = ("mlx", "cuda-um")
KERNELS = ("auto", "fused", "mlx")  # the mlx backend's model paths (--kernels)
KERNELS_ENV = "GIGAMLX_KERNELS"  # default of --kernels: CI forces the pure-MLX path with it


def get_backend(name: str, device: str = "auto", kernels: str | None = None) -> Backend:
    """The backend called `name` ("mlx" or "cuda-um").

    Args:
        device: cuda-um only: "auto" or "cuda[:N]" (needs CUDA), or "cpu"; mlx picks its own.
        kernels: mlx only: "auto", "fused" (the compiled CPU kernels) or "mlx" (pure MLX ops,
            the Metal path); None or "auto" defer to $GIGAMLX_KERNELS when it is set.
    """
    if name == "mlx":
        from gigamlx.backends.mlx.backend import MLXBackend

        if kernels in (None, "auto"):
            kernels = os.environ.get(KERNELS_ENV) or "auto"
        return MLXBackend(kernels)
    if name == "cuda-um":
        try:
            from gigamlx.backends.cuda_um.backend import CudaUMBackend
        except ImportError as error:
            raise ValueError(
                f"--backend cuda-um needs PyTorch ({error}); pip install 'gigamlx[cuda]'"
            ) from error
        return CudaUMBackend(device)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def backend_for(model) -> Backend:
    """The backend a model was built by (models carry a `backend_name`)."""
    name = getattr(model, "backend_name", None)
    if name is None:
        raise TypeError(f"{type(model).__name__} is not a gigamlx model (no backend_name)")
    return get_backend(name, getattr(model, "backend_device", "auto"))
