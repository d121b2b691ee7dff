"""Time the fused CPU kernels on one training window, and compare two builds of the extension.

    python scripts/bench_kernels.py                          # the installed gigamlx_fused
    python scripts/bench_kernels.py --against OLD/gigamlx_fused.cpython-311-x86_64-linux-gnu.so

A window of the default 2 GB budget's training tile (4288x4864: a 4032x4608 tile with its
halo), uint8 and standardised in the kernel as training reads it: down1 (the 16x16 stride-4
first layer) and the head (up-sampling, concatenation with the input, 3x3 conv), forward and
forward + gradients; then the head with the loss on the tile's owned crop, as a training step
runs it (one op from extension 0.7.7 on, which never writes the logits out); then the middle
(down2 ... up2 on the first layer's output, an edge tile's boxes) as the pure-MLX ops the
model ran before extension 0.8 and as the fused op. With
`--against`, a second build is loaded into the same process and the two alternate `--rounds`
times, so their ratio is taken under the same load; their outputs and gradients are compared
bit for bit. Prints a table with numpy's sgemm beside it, writes JSON.

An older build to compare with, from its commit (the extension builds in under a minute):

    git worktree add /tmp/old COMMIT
    pip install --no-build-isolation --target /tmp/old/site /tmp/old/kernels/ext
    python scripts/bench_kernels.py --against /tmp/old/site/gigamlx_fused.*.so
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from gigamlx.backends.mlx.blas import preload_blas

BLAS = preload_blas()  # must run before mlx.core is imported

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from benchmarks_md import publish, sgemm_gflops  # noqa: E402  (scripts/benchmarks_md.py)

from gigamlx.backends.mlx import fused, ops  # noqa: E402
from gigamlx.backends.mlx.model import relu_in_box  # noqa: E402
from gigamlx.core.geometry import Box  # noqa: E402
from gigamlx.core.memory import keep_freed_memory  # noqa: E402

MARKDOWN_TITLE = "Fused CPU kernels on one training window (bench_kernels.py)"
MARKDOWN_WHAT = (
    "Best-of-`--repeat` milliseconds of the extension's kernels on a 4288x4864 uint8 window "
    "standardised in the kernel (the 2 GB budget's training tile with its halo), forward and "
    "forward + gradients; then the head with the loss on the tile's owned crop as a step runs "
    "it (the statistics pass, and the gradients alone as the second pass evaluates them); then "
    "the middle (down2 ... up2 on the first layer's output, an edge tile's boxes) as the "
    "pure-MLX ops the model ran before extension 0.8 and as the fused op; GFLOP/s from the "
    "multiply-adds of each op's own arithmetic (the head's over the window)."
)
# down1: 16x16x3 -> 2 at stride 4; the head: up1 (4 -> 3 channels, 4x4 stride 4) + 3x3x6 -> 1
DOWN1_MAC_PER_OUT = 16 * 16 * 3 * 2
HEAD_MAC_PER_PX = 3 * 4 + 9 * 6
HALO_PX = 128  # the 2 GB budget's tile halo: the loss reads the window less this margin
LOSS_COEFFICIENTS = (-1e-9, 1e-9, 1e-9)  # a Dice+BCE surrogate's (tiny, as on a region)
# the head's gradients: d w_head (9x6), d of the 3 up-sampled channels (9x3), d w_up and d h2
HEAD_GRAD_MAC_PER_PX = 9 * 6 + 9 * 3 + 2 * 3 * 4
# the middle per output pixel at 1/16 scale (down2 8x8x2 -> 4, up2 from 8 channels to a 4x4
# block of 2) and at 1/64 (down3 8x8x4 -> 6, up3 from 6 to a 4x4 block of 4); its gradient
# is twice its forward (input and weights), after the forward it recomputes
MIDDLE_MAC_PER_PX16 = 8 * 8 * 2 * 4 + 8 * 4 * 4 * 2
MIDDLE_MAC_PER_PX64 = 8 * 8 * 4 * 6 + 6 * 4 * 4 * 4
# the middle's layers: (stride, pad) of down2 and down3; kernel == stride 4 on the way up
MIDDLE_DOWN = ((4, 2), (4, 2))


def load_build(path: Path) -> ModuleType:
    """A build of the extension from its .so file, beside the installed one."""
    spec = importlib.util.spec_from_file_location("gigamlx_fused", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_inputs(window_hw: tuple[int, int]) -> dict:
    """A random uint8 window, the coarse input of up1, weights and cotangents."""
    h, w = window_hw
    rng = np.random.default_rng(0)
    ho, wo = (h + 2 * 6 - 16) // 4 + 1, (w + 2 * 6 - 16) // 4 + 1
    halo = min(HALO_PX, h // 4, w // 4)  # small windows keep a crop

    def normal(shape, scale=1.0):
        return mx.array(rng.normal(0, scale, shape).astype(np.float32))

    inputs = {
        "x": mx.array(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)),
        "norm": ([0.7, 0.6, 0.75], [0.2, 0.25, 0.18], (0, 0, h, w)),
        "down1": (normal((2, 16, 16, 3), 0.05), normal((2,), 0.1)),
        "down1_keep": (0, 0, ho, wo),
        "down1_cotangent": normal((1, ho, wo, 2)),
        "h2": mx.maximum(normal((1, h // 4, w // 4, 4)), 0),
        "head": (normal((3, 4, 4, 4), 0.3), normal((3,), 0.1)),
        "head_conv": (normal((1, 3, 3, 6), 0.3), normal((1,), 0.1)),
        "head_cotangent": normal((1, h, w, 1)),
        "h1": mx.maximum(normal((1, ho, wo, 2)), 0),
        "middle": [
            *(normal((4, 8, 8, 2), 0.3), normal((4,), 0.1)),
            *(normal((6, 8, 8, 4), 0.3), normal((6,), 0.1)),
            *(normal((4, 4, 4, 6), 0.3), normal((4,), 0.1)),
            *(normal((2, 4, 4, 8), 0.3), normal((2,), 0.1)),
        ],
        # an edge tile's boxes: the first row and column of every layer outside the image
        "middle_keeps": [(1, 1, ho // s, wo // s) for s in (4, 16, 4, 1)],
        "middle_cotangent": normal((1, ho, wo, 4)),
        # the owned crop of a training tile (the halo cut off) and its {0, 1} target
        "crop_yx": (halo, halo),
        "target": mx.array(rng.integers(0, 2, (h - 2 * halo, w - 2 * halo), np.uint8)),
        "macs": {
            "down1": ho * wo * DOWN1_MAC_PER_OUT,
            "head": h * w * HEAD_MAC_PER_PX,
            "head_grad": h * w * HEAD_GRAD_MAC_PER_PX,
            "middle": (ho // 4) * (wo // 4) * MIDDLE_MAC_PER_PX16
            + (ho // 16) * (wo // 16) * MIDDLE_MAC_PER_PX64,
        },
    }
    mx.eval([v for v in inputs.values() if isinstance(v, mx.array)])
    return inputs


def kernel_calls(module: ModuleType, a: dict) -> dict[str, tuple[Callable, int]]:
    """name -> (a call returning arrays, its multiply-adds)."""
    x, norm, keep = a["x"], a["norm"], a["down1_keep"]

    def down1(weight, bias):
        return module.down1(x, weight, bias, 4, 6, keep, *norm)

    def head(h2, w_up, b_up, w_head, b_head):
        return module.head_logits(h2, x, w_up, b_up, w_head, b_head, norm[2], *norm)

    def head_loss(*params):
        """The loss of the head's logits on the crop: one op from extension 0.7.7 on, the
        logits and the loss (two ops) before."""
        return module.tile_loss(head(*params), a["target"], *a["crop_yx"], *LOSS_COEFFICIENTS)

    head_args = [a["h2"], *a["head"], *a["head_conv"]]
    macs = a["macs"]
    middle_args, middle_cotangent = [a["h1"], *a["middle"]], a["middle_cotangent"]

    def middle_of(run):  # run(h1, params, keeps) -> the middle's output
        forward = (lambda: [run(a["h1"], a["middle"], a["middle_keeps"])], macs["middle"])
        backward = (
            lambda: mx.vjp(
                lambda h1, *p: [run(h1, list(p), a["middle_keeps"])],
                middle_args,
                [middle_cotangent],
            ),
            3 * macs["middle"],
        )
        return forward, backward

    def fused_middle(h1, params, keeps):
        return module.middle(h1, params, *MIDDLE_DOWN, keeps)

    middles = {}
    for label, run in [("pure-MLX ops", mlx_middle), ("fused", fused_middle)]:
        if label == "fused" and not hasattr(module, "middle"):
            continue  # builds before 0.8 run the middle as pure-MLX ops
        forward, backward = middle_of(run)
        middles[f"middle forward ({label})"] = forward
        middles[f"middle forward+grad ({label})"] = backward
    return {
        "down1 forward": (lambda: [down1(*a["down1"])], macs["down1"]),
        "down1 forward+grad": (
            lambda: mx.vjp(down1, list(a["down1"]), [a["down1_cotangent"]]),
            2 * macs["down1"],
        ),
        "head forward": (lambda: [head(*head_args)], macs["head"]),
        "head forward+grad": (
            lambda: mx.vjp(head, head_args, [a["head_cotangent"]]),
            macs["head"] + macs["head_grad"],
        ),
        "head+loss forward": (lambda: list(head_loss(*head_args)), macs["head"]),
        # only the gradients, as a step's second pass evaluates them (not the loss's value)
        "head+loss gradients": (
            lambda: mx.vjp(lambda *p: [head_loss(*p)[0]], head_args, [mx.array(1.0)])[1],
            macs["head"] + macs["head_grad"],
        ),
        **middles,
    }


def mlx_middle(h1: mx.array, params: list[mx.array], keeps: list[tuple]) -> mx.array:
    """The middle as the pure-MLX path computes it (GigaUNet.logits' layer loop, the model's
    own ops): down2, down3, up3 joined with down2, up2 joined with h1."""
    w2, b2, w3, b3, wu3, bu3, wu2, bu2 = params
    (s2, p2), (s3, p3) = MIDDLE_DOWN
    a2 = relu_in_box(ops.conv2d_parts([h1], w2, b2, s2, p2), Box(*keeps[0]))
    a3 = relu_in_box(ops.conv2d_parts([a2], w3, b3, s3, p3), Box(*keeps[1]))
    a4 = relu_in_box(ops.conv_transpose2d(a3, wu3, bu3, 4), Box(*keeps[2]))
    up2 = ops.conv_transpose2d(ops.join([a4, a2]), wu2, bu2, 4)
    return ops.join([relu_in_box(up2, Box(*keeps[3])), h1])


def best_ms(call: Callable, repeat: int) -> tuple[float, list]:
    """Best wall milliseconds of `repeat` evaluated calls (after one warm-up), and the output."""
    out = call()
    mx.eval(out)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = call()
        mx.eval(out)
        best = min(best, time.perf_counter() - start)
    return best * 1e3, out


def flat(output) -> list[mx.array]:
    if isinstance(output, mx.array):
        return [output]
    return [leaf for item in output for leaf in flat(item)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", default="4288x4864", help="window H x W in pixels")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per round (best kept)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, builds alternating")
    parser.add_argument("--against", type=Path, help="another build's .so to compare with")
    parser.add_argument("--json", type=Path, default=Path("out/bench_kernels.json"))
    parser.add_argument(
        "--markdown", type=Path, help="rewrite this script's section of docs/benchmarks.md"
    )
    args = parser.parse_args()
    keep_freed_memory(500_000_000)  # a training process keeps freed windows for reuse
    module, version = fused._load()
    if module is None:
        raise SystemExit(f"the fused extension is not installed ({version}): bash setup.sh")
    builds = {f"installed {module.__version__}": module}
    if args.against:
        other = load_build(args.against)
        builds[f"against {other.__version__}"] = other
    h, w = (int(v) for v in args.window.lower().split("x"))
    inputs = make_inputs((h, w))
    sgemm = sgemm_gflops()
    print(f"window {h}x{w}; numpy sgemm {sgemm:.0f} GFLOP/s; BLAS {BLAS.name}")
    times: dict[tuple[str, str], list[float]] = {}
    outputs: dict[tuple[str, str], list] = {}
    macs: dict[str, int] = {}
    for round_ in range(args.rounds):
        for build, mod in builds.items():
            for name, (call, count) in kernel_calls(mod, inputs).items():
                ms, out = best_ms(call, args.repeat)
                times.setdefault((name, build), []).append(ms)
                outputs.setdefault((name, build), flat(out))
                macs[name] = count
            print(f"round {round_ + 1}: {build} done", flush=True)
    names = list(builds)
    header = ["kernel", *(f"{b} ms" for b in names), "GFLOP/s", "% sgemm"]
    if len(names) == 2:
        header += ["installed / against", "same bits"]
    rows, table = [], []
    for name in macs:
        present = [b for b in names if (name, b) in times]  # builds before 0.8 lack the middle
        best = {b: min(times[(name, b)]) for b in present}
        gflops = 2 * macs[name] / best[present[0]] / 1e6
        cells = [name, *(f"{best[b]:.1f}" if b in best else "-" for b in names)]
        cells += [f"{gflops:.1f}", f"{100 * gflops / sgemm:.0f}%"]
        row = {"kernel": name, "best_ms": best, "rounds_ms": {b: times[(name, b)] for b in present}}
        if len(names) == 2 and len(present) == 2:
            same = all(
                mx.array_equal(p, q).item()
                for p, q in zip(outputs[(name, names[0])], outputs[(name, names[1])], strict=True)
            )
            cells += [f"{best[names[0]] / best[names[1]]:.2f}", "yes" if same else "NO"]
            row["same_bits"] = same
        elif len(names) == 2:
            cells += ["", ""]
        rows.append({**row, "gflops": gflops})
        table.append(cells)
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for cells in [header, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    facts = {"window_hw": [h, w], "sgemm_gflops": sgemm, "builds": names, "kernels": rows}
    args.json.write_text(json.dumps(facts, indent=2))
    print(f"wrote {args.json}")
    if args.markdown:
        from benchmarks_md import markdown_table

        tables = [f"window {h}x{w}; numpy sgemm {sgemm:.0f} GFLOP/s", markdown_table(header, table)]
        publish(args.markdown, "bench_kernels.py", MARKDOWN_TITLE, MARKDOWN_WHAT, tables, sgemm)


if __name__ == "__main__":
    main()
