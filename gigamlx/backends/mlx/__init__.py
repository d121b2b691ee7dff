"""The native MLX backend. Importing this package first loads a fast BLAS where one is found
(the Linux `mlx[cpu]` build binds cblas at load time), so it must precede `import mlx.core`;
and it makes the threads MLX starts share the main malloc heap (core.memory.share_one_heap:
a thread allocates from its own heap at its first allocation, so before MLX's threads exist)."""

from gigamlx.backends.mlx.blas import preload_blas
from gigamlx.core.memory import share_one_heap

preload_blas()
share_one_heap()
