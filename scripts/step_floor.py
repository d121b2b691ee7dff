"""What bounds an exact training step's wall time on this machine's cores (issue 29).

    python scripts/step_floor.py                                  # built-in slide, 16000x64000
    python scripts/step_floor.py --target-s 12 --markdown docs/benchmarks.md

A Dice step runs the fused kernels over every tile's window twice (pass 1 forward for the
sums, pass 2 forward and backward) while the prefetch thread reads every window twice (less
the few pass 1 keeps), on the same cores. Three measured figures bound its wall time:

- *kernels at sgemm*: the multiply-adds of the windows (halos included: they are computed;
  `gigamlx.core.spec.macs_per_px`) at numpy's float32 matmul rate over all cores, the best a
  matmul-shaped kernel could do;
- *kernels as built*: bench_kernels.py's calls on one training window (pass 1: down1, the
  middle, the head with the loss's sums; pass 2: the same with gradients), per window pixel,
  over the plan's windows;
- *reads*: CPU seconds of bench_read.py's pass over the same plan (colour jitter, light,
  straight and quarter-turned: a step draws either), after one untimed pass (a run's store
  is in the page cache after its first step), spread over the cores.

A step can be no faster than kernels + reads / cores, with perfect overlap and nothing else
(no Python, no page faults, no optimizer); the last row says how close to sgemm the kernels
would have to run for a target step time. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# bench_kernels loads the fast BLAS before mlx.core; it and bench_read are scripts/ modules
from bench_kernels import kernel_calls, make_inputs, best_ms  # isort: skip
import numpy as np  # noqa: E402
from bench import flop_per_step  # noqa: E402
from bench_read import read_pass  # noqa: E402
from benchmarks_md import publish, sgemm_gflops  # noqa: E402

from gigamlx.backends import get_backend  # noqa: E402
from gigamlx.backends.mlx import fused  # noqa: E402
from gigamlx.core.bands import usable_cores  # noqa: E402
from gigamlx.core.memory import keep_freed_memory, parse_bytes  # noqa: E402
from gigamlx.runs.config import DEFAULTS, parse_region  # noqa: E402
from gigamlx.tiling.scheduler import resolve_plan  # noqa: E402
from gigamlx.tiling.windows import cache_limit_bytes, kept_tiles  # noqa: E402
from gigamlx.train.augment import draw_illumination, draw_jitter, lut32  # noqa: E402
from gigamlx.train.data import open_training_slides  # noqa: E402
from gigamlx.train.regions import Region  # noqa: E402

MARKDOWN_TITLE = "What bounds a training step on these cores (step_floor.py)"
MARKDOWN_WHAT = (
    "Lower bounds on an exact Dice step's wall time, from three measured figures: the windows' "
    "multiply-adds at numpy's sgemm rate, the fused kernels as built (one training window, "
    "scaled by pixels) and the window reads' CPU seconds spread over the cores."
)
PASS1 = ("down1 forward", "middle forward (fused)", "head+loss forward")
PASS2 = ("down1 forward+grad", "middle forward+grad (fused)", "head+loss gradients")


def kernel_ms(window_hw: tuple[int, int], repeat: int) -> dict[str, float]:
    """Best-of-`repeat` ms of each pass's kernels on one window of this size."""
    module, version = fused._load()
    if module is None or not hasattr(module, "middle"):
        raise SystemExit(f"the fused extension 0.8 or newer is needed ({version}): bash setup.sh")
    calls = kernel_calls(module, make_inputs(window_hw))
    return {name: best_ms(calls[name][0], repeat)[0] for name in PASS1 + PASS2}


def read_cpu_s(slide, source_hw, rot90: int, tile_hw, repeats: int) -> float:
    """Median CPU seconds of one pass's reads of a region turned `rot90` quarter turns."""
    rng = np.random.default_rng(0)
    jitter, light = draw_jitter(rng, 1.0), draw_illumination(rng, 1.0)
    lut32(jitter)  # a run builds it once per region, not once per pass
    region = Region(0, (0, 0), source_hw, True, rot90, jitter, light)
    turner = get_backend("mlx").window_turner
    read_pass(slide, region, tile_hw, turner)  # untimed: brings the store into the page cache
    return statistics.median(
        read_pass(slide, region, tile_hw, turner)["cpu_s"] for _ in range(repeats)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", default="16000x64000", help="HxW region of a step")
    parser.add_argument("--budget", default=DEFAULTS.memory_budget, help="memory budget")
    parser.add_argument("--slide", help="slide store read (default: the built-in slide)")
    parser.add_argument("--target-s", type=float, default=12.0, help="step time to compare")
    parser.add_argument("--repeat", type=int, default=5, help="kernel calls timed (best kept)")
    parser.add_argument("--read-repeats", type=int, default=1, help="read passes per turn")
    parser.add_argument("--json", type=Path, default=Path("out/step_floor.json"))
    parser.add_argument("--markdown", type=Path, help="rewrite this script's section there")
    args = parser.parse_args()
    budget = parse_bytes(args.budget)
    keep_freed_memory(budget // 4)  # freed windows reused, as in a training process
    cores = usable_cores()
    image_hw = parse_region(args.region)
    backend = get_backend("mlx")
    model = backend.build_model(0)
    plan = resolve_plan(backend, model, "grad", image_hw, None, budget)
    turned = resolve_plan(backend, model, "grad", image_hw[::-1], None, budget)
    windows_px = sum(t.in_box.area() for t in plan.tiles)
    flop = flop_per_step("gigamlx", windows_px, tiles=2)  # the two-pass step bounded here
    sgemm = sgemm_gflops(2048)

    largest = max((t.in_box.hw for t in plan.tiles), key=lambda hw: hw[0] * hw[1])
    ms = kernel_ms(largest, args.repeat)
    per_px_s = sum(ms.values()) / 1e3 / (largest[0] * largest[1])
    kernels_s = per_px_s * windows_px
    pass_ms = {"pass 1": sum(ms[k] for k in PASS1), "pass 2": sum(ms[k] for k in PASS2)}

    slide = open_training_slides((args.slide,) if args.slide else ())[0]
    reread = 2 - len(kept_tiles(plan, cache_limit_bytes(slide.image, budget))) / len(plan.tiles)
    pass_cpu = {
        "straight": read_cpu_s(slide, image_hw, 0, plan.tile_hw, args.read_repeats),
        "quarter-turned": read_cpu_s(slide, image_hw, 1, turned.tile_hw, args.read_repeats),
    }
    reads_cpu = {turn: reread * cpu for turn, cpu in pass_cpu.items()}

    at_sgemm_s = flop / sgemm / 1e9
    rows = [
        ("kernels at sgemm", at_sgemm_s, f"{flop / 1e12:.2f} TFLOP at {sgemm:.0f} GFLOP/s"),
        ("kernels as built", kernels_s,
         f"{len(plan.tiles)} windows; per {largest[0]}x{largest[1]} window "
         f"pass 1 {pass_ms['pass 1']:.0f} ms, pass 2 {pass_ms['pass 2']:.0f} ms "
         f"({100 * flop / kernels_s / sgemm / 1e9:.0f}% of sgemm)"),
    ]  # fmt: skip
    for turn, cpu in reads_cpu.items():
        rows.append((f"reads, {turn}", cpu / cores,
                     f"{cpu:.1f} CPU s ({pass_cpu[turn]:.2f} a pass x {reread:.2f}) "
                     f"over {cores} cores"))  # fmt: skip
    floors, needed = {}, {}
    for turn, cpu in reads_cpu.items():
        floors[f"floor at sgemm, {turn}"] = at_sgemm_s + cpu / cores
        floors[f"floor as built, {turn}"] = kernels_s + cpu / cores
        left_s = args.target_s - cpu / cores  # what the reads leave the kernels
        needed[turn] = at_sgemm_s / left_s if left_s > 0 else None  # None: out of reach
    rows += [(name, s, "kernels + reads, perfect overlap") for name, s in floors.items()]
    header = ("piece of a step", "wall s", "how")
    table = [(name, f"{s:.2f}", how) for name, s, how in rows]
    need = "; ".join(
        f"{turn} reads: kernels at {100 * share:.0f}% of sgemm"
        if share and share <= 1
        else f"{turn} reads: out of reach"
        for turn, share in needed.items()
    )
    table.append(("target", f"{args.target_s:.2f}", f"needs, with {need}"))
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(3)]
    print(f"{args.region} region, tiles {plan.tile_hw[0]}x{plan.tile_hw[1]} at {args.budget}; "
          f"numpy sgemm {sgemm:.0f} GFLOP/s; {cores} cores")  # fmt: skip
    for cells in [header, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    facts = {
        "region_hw": list(image_hw), "tile_hw": list(plan.tile_hw), "tiles": len(plan.tiles),
        "windows_px": windows_px, "flop": flop, "sgemm_gflops": sgemm, "cores": cores,
        "kernel_ms": ms, "read_pass_cpu_s": pass_cpu, "reads_per_step_cpu_s": reads_cpu,
        "kernels_s": kernels_s, "floors_s": floors, "target_s": args.target_s,
        "kernel_share_of_sgemm_needed": needed,
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(facts, indent=2))
    print(f"wrote {args.json}")
    if args.markdown:
        from benchmarks_md import markdown_table

        tables = [f"{args.region} region, tiles {plan.tile_hw[0]}x{plan.tile_hw[1]} at "
                  f"{args.budget}, {cores} cores", markdown_table(header, table)]  # fmt: skip
        publish(args.markdown, "step_floor.py", MARKDOWN_TITLE, MARKDOWN_WHAT, tables, sgemm)


if __name__ == "__main__":
    main()
