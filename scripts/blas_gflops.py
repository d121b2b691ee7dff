"""Single-precision matmul speed through MLX with the BLAS gigamlx picks (docs/install.md).

Run: python scripts/blas_gflops.py [--size 2048] [--repeats 5]; GIGAMLX_BLAS=none measures
MLX's bundled BLAS, GIGAMLX_BLAS=/path/libopenblas.so.0 a given library.
"""

from __future__ import annotations

import argparse
import time

import gigamlx.backends.mlx  # noqa: F401  (preloads the BLAS; must precede mlx.core)
from gigamlx.backends.mlx.blas import blas_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="square matrix side")
    parser.add_argument("--repeats", type=int, default=5, help="timed products (best is kept)")
    args = parser.parse_args()
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    a = mx.random.normal((args.size, args.size))
    b = mx.random.normal((args.size, args.size))
    mx.eval(a @ b)  # warm-up
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        mx.eval(a @ b)
        seconds.append(time.perf_counter() - start)
    gflops = 2 * args.size**3 / min(seconds) / 1e9
    info = blas_info()
    print(f"{info.name} ({info.path or info.reason}): {args.size}² sgemm {gflops:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
