"""gigamlx: exact tiled training of GigaUNet-4492 on whole gigapixel slide regions.

Engines load on first use (the MLX CPU build must see a fast BLAS before `mlx.core` loads),
so `import gigamlx` itself is cheap.
"""

__version__ = "0.1.0"
__all__ = ["GigaUNet", "tiled_value_and_grad", "predict"]


def __getattr__(name: str):
    if name == "GigaUNet":
        from gigamlx.backends.mlx.model import GigaUNet

        return GigaUNet
    if name in ("tiled_value_and_grad", "predict"):
        from gigamlx import api

        return getattr(api, name)
    raise AttributeError(f"module 'gigamlx' has no attribute {name!r}")
