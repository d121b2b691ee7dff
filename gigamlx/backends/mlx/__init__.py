"""The native MLX backend. Importing this package first loads a fast BLAS where one is found
(the Linux `mlx[cpu]` build binds cblas at load time), so it must precede `import mlx.core`."""

from gigamlx.backends.mlx.blas import preload_blas

preload_blas()
