"""Time the hot ops, MLX reference vs the formulations in gigamlx/backends/mlx/, fwd and fwd+bwd.

Usage: python scripts/bench_ops.py [--repeat 3] [--json out/bench_ops.json] [--only k16,head]
Set GIGAMLX_BLAS=none to time MLX's bundled BLAS instead of a preloaded OpenBLAS.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from gigamlx.backends.mlx.blas import preload_blas

BLAS = preload_blas()  # must run before mlx.core is imported

import mlx.core as mx  # noqa: E402

from gigamlx.backends.mlx import conv, conv_taps, conv_transpose  # noqa: E402


class Case(NamedTuple):
    """One op at one tile shape. `pad` None marks a conv-transpose."""

    name: str
    x_shape: tuple[int, int, int, int]  # (N, H, W, C_in)
    weight_shape: tuple[int, int, int, int]  # (C_out, k, k, C_in)
    stride: int
    pad: int | None
    parts: tuple[int, ...] = ()  # the input's channels arrive as these parts (the head)


CASES = (
    Case("down1 k16", (1, 1280, 1280, 3), (2, 16, 16, 3), 4, 6),
    Case("down2 k8", (1, 320, 320, 2), (4, 8, 8, 2), 4, 2),
    Case("down3 k8", (1, 80, 80, 4), (6, 8, 8, 4), 4, 2),
    Case("up3 ct", (1, 20, 20, 6), (4, 4, 4, 6), 4, None),
    Case("up2 ct", (1, 80, 80, 8), (2, 4, 4, 8), 4, None),
    Case("up1 ct", (1, 320, 320, 4), (3, 4, 4, 4), 4, None),
    Case("head k3", (1, 1280, 1280, 6), (1, 3, 3, 6), 1, 1),
    Case("head parts", (1, 1280, 1280, 6), (1, 3, 3, 6), 1, 1, (3, 3)),
)


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Minimum wall time of `mx.eval(fn())` over `repeat` runs, after one warm-up."""
    mx.eval(fn())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def time_op(op: Callable, case: Case, repeat: int) -> dict[str, float]:
    """Forward seconds, and forward+backward (vjp for x, weight, bias) seconds of one op."""
    n, h, w, _ = case.x_shape
    inputs = [mx.random.normal((n, h, w, c)) for c in case.parts or case.x_shape[3:]]
    weight = mx.random.normal(case.weight_shape) * 0.1
    bias = mx.random.normal(case.weight_shape[:1])
    extra = (case.stride,) if case.pad is None else (case.stride, case.pad)
    mx.eval(inputs, weight, bias)

    def call(*primals):
        x = list(primals[:-2]) if case.parts else primals[0]
        return op(x, *primals[-2:], *extra)

    primals = [*inputs, weight, bias]
    cotangent = mx.random.normal(call(*primals).shape)  # dense, as the layers above send

    def forward_backward():
        return mx.vjp(call, primals, [cotangent])

    return {
        "forward_s": best_seconds(lambda: call(*primals), repeat),
        "forward_backward_s": best_seconds(forward_backward, repeat),
    }


def ops_for(case: Case) -> tuple[Callable, Callable]:
    if case.parts:  # MLX's conv of the joined parts vs the head that never joins them
        return (
            lambda parts, *p: conv.conv2d_reference(mx.concatenate(parts, axis=-1), *p),
            lambda parts, w, b, stride, pad: conv_taps.conv2d_parts(parts, w, b, pad),
        )
    if case.pad is None:
        return conv_transpose.conv_transpose2d_reference, conv_transpose.conv_transpose2d
    return conv.conv2d_reference, conv.conv2d


HEADER = ("op", "x shape", "ref fwd", "fast fwd", "ref f+b", "fast f+b", "speedup f+b")
WIDTHS = (10, 20, 9, 9, 9, 9, 11)  # printed: the first two left-aligned, the rest right
MARKDOWN_TITLE = "Hot ops: MLX's own vs gigamlx's formulations (bench_ops.py)"
MARKDOWN_WHAT = (
    "Best-of-`--repeat` seconds of each model op at one tile shape, MLX's reference op vs the "
    "formulation in gigamlx/backends/mlx/, forward and forward+backward (vjp for x, weight, "
    "bias)."
)


def _cells(case: Case, ref: dict[str, float], new: dict[str, float]) -> list[str]:
    speedup = ref["forward_backward_s"] / new["forward_backward_s"]
    seconds = [ref["forward_s"], new["forward_s"], ref["forward_backward_s"]]
    seconds.append(new["forward_backward_s"])
    return [case.name, str(case.x_shape), *(f"{t:.4f}" for t in seconds), f"{speedup:.1f}x"]


def _line(cells: list[str]) -> str:
    pairs = enumerate(zip(cells, WIDTHS, strict=True))
    return " ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("out/bench_ops.json"))
    parser.add_argument("--only", default="", help="comma-separated name prefixes")
    parser.add_argument(
        "--markdown",
        type=Path,
        help="rewrite this script's section of this file (e.g. docs/benchmarks.md)",
    )
    args = parser.parse_args()
    prefixes = [p for p in args.only.split(",") if p]
    device = f"{mx.default_device()} ({mx.device_info().get('device_name', '?')})"
    print(f"device: {device}; BLAS: {BLAS.name} {BLAS.path or BLAS.reason}")
    print(_line(list(HEADER)))
    rows, table = [], []
    for case in CASES:
        if prefixes and not any(case.name.startswith(p) for p in prefixes):
            continue
        reference, fast = ops_for(case)
        ref = time_op(reference, case, args.repeat)
        new = time_op(fast, case, args.repeat)
        table.append(_cells(case, ref, new))
        print(_line(table[-1]), flush=True)
        rows.append({"op": case.name, "x_shape": case.x_shape, "reference": ref, "fast": new})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": device, "blas": BLAS._asdict(), "cases": rows}
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    if args.markdown:
        from benchmarks_md import markdown_table, publish  # scripts/benchmarks_md.py

        header = [*HEADER[:2], *(f"{h} s" for h in HEADER[2:6]), HEADER[6]]
        tables = [f"device: {device}", markdown_table(header, table)]
        publish(args.markdown, "bench_ops.py", MARKDOWN_TITLE, MARKDOWN_WHAT, tables)


if __name__ == "__main__":
    main()
