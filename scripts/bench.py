"""Side-by-side training-step benchmark (issue 5): gigamlx tiled vs whole-image PyTorch and MLX.

Same weights (MLX init, seed 0), same loss (exact soft Dice), same random data, same Adam
update, one process per configuration (so each peak RSS is its own).

    python scripts/bench.py                                   # 2048², 4096², 8192², 16000x64000
    python scripts/bench.py --sizes 512,1024 --big 1024x4096  # a quick look

Rows give the median s/step of --steps steps after --warmup untimed ones; the --big region
runs --big-steps after --big-warmup (1 and 0: that one step includes the tile-size probes).
gigamlx reads its windows inside the step; the peers get their whole image up front. A
whole-image peer is skipped when its peak RSS, extrapolated from bytes/px measured at the
smaller sizes, would exceed --max-rss-gb. `gigamlx-mlx` is the tiled step on the pure-MLX
model path (kernels "mlx": the code Metal runs), at the square sizes only.

Work per row: GFLOP/s = FLOP per step / median s/step, with FLOP per step = 2 * pixels *
multiply-adds per pixel from the layer table (gigamlx.core.spec.macs_per_px): forward +
backward for a whole-image step and a one-tile gigamlx step, two forwards + one backward for
the exact two-pass tiled step (tile halos recomputed are not counted: they are overhead, not
work). "% sgemm" is that rate over numpy's float32 matmul rate measured at the start of the
same run. CPU seconds and page faults per step come from getrusage around the timed steps of
each row's own process.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import typer
from benchmarks_md import sgemm_gflops  # scripts/benchmarks_md.py
from rich.console import Console
from rich.table import Table

from gigamlx.core.losses import DICE_SMOOTH
from gigamlx.core.memory import cpu_usage, current_rss_bytes, parse_bytes, peak_rss_bytes
from gigamlx.core.spec import macs_per_px
from gigamlx.runs.config import DEFAULT_MEMORY_BUDGET, DEFAULTS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
KINDS = ("torch", "gigamlx", "gigamlx-mlx", "mlx-whole")  # torch first: ratios refer to it
# peak RSS per pixel before anything is measured (issue 5: torch at 8192², MLX at 4096²)
# peak RSS per pixel of the whole-image peers at 8192² on this machine (12.9 and 7.0 GB)
PRIOR_BYTES_PER_PX = {"torch": 190.0, "mlx-whole": 110.0}
# below this, fixed allocations distort a measured bytes/px: PyTorch's 2048² run (1.33 GB,
# its libraries included) scaled to 8192² gives 20.5 GB, where it takes 12.9 GB
TRUST_PX = 4096 * 4096
BLOCK_PX = 512
LR = 1e-3
SEED = 0
RAM_BYTES = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
MARKDOWN_TITLE = "Training step: gigamlx tiled vs PyTorch eager and whole-image MLX (bench.py)"
MARKDOWN_WHAT = (
    "Median seconds per exact soft-Dice training step (same weights, data and Adam update in "
    "every row, one process per row), peak RSS, work rate against numpy's sgemm, CPU seconds "
    "and page faults per step; then where the last tiled step's seconds went."
)


class RandomRegion:
    """A lazily generated (H, W, 3) uint8 image, or (H, W) {0, 1} mask when channels is 0.

    Each 512² block is a window of one small random pool at an offset hashed from the block
    index: any window reads the same pixels, a read costs about a memcpy (like a cached
    slide), and a 16000x64000 region never exists in memory whole.
    """

    def __init__(self, hw: tuple[int, int], channels: int, seed: int = SEED):
        self.shape = hw + ((channels,) if channels else ())
        self.dtype, self.seconds = np.dtype(np.uint8), 0.0
        pool_shape = (2 * BLOCK_PX, 2 * BLOCK_PX) + self.shape[2:]
        rng = np.random.default_rng((seed, channels))
        self.pool = rng.integers(0, 256 if channels else 2, pool_shape, dtype=np.uint8)

    def _block(self, by: int, bx: int) -> np.ndarray:
        oy, ox = (by * 7919 + bx * 104729) % BLOCK_PX, (by * 31337 + bx * 65537) % BLOCK_PX
        return self.pool[oy : oy + BLOCK_PX, ox : ox + BLOCK_PX]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        start = time.perf_counter()
        (y0, y1, _), (x0, x1, _) = (k.indices(n) for k, n in zip(key, self.shape, strict=False))
        by0, bx0 = y0 // BLOCK_PX, x0 // BLOCK_PX
        bys, bxs = range(by0, -(-y1 // BLOCK_PX)), range(bx0, -(-x1 // BLOCK_PX))
        canvas = np.concatenate(
            [np.concatenate([self._block(by, bx) for bx in bxs], axis=1) for by in bys]
        )  # the whole blocks the window touches
        oy, ox = by0 * BLOCK_PX, bx0 * BLOCK_PX
        out = np.ascontiguousarray(canvas[y0 - oy : y1 - oy, x0 - ox : x1 - ox])
        self.seconds += time.perf_counter() - start
        return out


def _soft_dice(p, g):
    """Soft Dice of whole-image (H, W) probabilities p and target g (torch or MLX arrays).

    Sums by rows first: MLX's CPU sum of a whole float32 image accumulates sequentially and
    stalls at 2^24 (8192² values in [0, 1) sum to 16777216.0).
    """

    def total(v):
        return v.sum(-1).sum()

    return 1 - (2 * total(p * g) + DICE_SMOOTH) / (total(p) + total(g) + DICE_SMOOTH)


def _time_steps(step, steps: int, warmup: int, reset_peak=None) -> dict:
    """Run `step` (returns the loss) warmup + steps times; time the last `steps` (their
    engine peak, CPU seconds and page faults too: `reset_peak` runs after the warm-up)."""
    losses, seconds = [], []
    for index in range(warmup + steps):
        if index == warmup:
            if reset_peak is not None:
                reset_peak()
            usage = cpu_usage()
        start = time.perf_counter()
        losses.append(step())
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    used = cpu_usage() - usage
    per_step = {
        "user_s": used.user_s / steps,
        "system_s": used.system_s / steps,
        "minor_faults": used.minor_faults / steps,
    }
    return {"loss": losses[0], "step_seconds": seconds, "seconds": statistics.median(seconds),
            "per_step": per_step}  # fmt: skip


def flop_per_step(kind: str, pixels: int, tiles: int = 1) -> float:
    """Useful FLOP of one step (see the module docstring): tiled steps of more than one tile
    make two passes."""
    forward, backward = macs_per_px()
    two_passes = kind.startswith("gigamlx") and tiles > 1
    passes = 2 * forward + backward if two_passes else forward + backward
    return 2.0 * passes * pixels


def _run_tiled(
    hw, steps: int, warmup: int, budget_bytes: int, cache_share: float, kernels: str
) -> dict:
    import gigamlx.backends.mlx  # noqa: F401  (first: loads a fast BLAS before mlx.core)

    # isort: split
    import mlx.core as mx

    if cache_share > 0:  # freed buffers MLX keeps for reuse instead of faulting in new pages
        mx.set_cache_limit(int(cache_share * budget_bytes))

    from gigamlx.backends import get_backend
    from gigamlx.tiling.scheduler import tiled_step

    backend = get_backend("mlx", kernels=kernels)
    model = backend.build_model(SEED)
    optimizer = backend.make_optimizer(model, LR)
    image, mask = RandomRegion(hw, 3), RandomRegion(hw, 0)
    last: dict = {}

    def step() -> float:
        start = time.perf_counter()
        result = tiled_step(backend, model, image, mask, "dice", budget_bytes=budget_bytes)
        before_update = time.perf_counter()
        backend.apply_gradients(model, optimizer, result.grads)
        end = time.perf_counter()
        last.update(result=result, update=end - before_update, wall=end - start)
        image.seconds = mask.seconds = 0.0
        return result.loss

    row = _time_steps(step, steps, warmup, mx.reset_peak_memory)
    r = last["result"]
    row.update(tile_hw=list(r.plan.tile_hw), tiles=len(r.plan.tiles), profile=_profile(last))
    return row | {"mlx_peak_bytes": mx.get_peak_memory(), "budget_bytes": budget_bytes}


def _profile(last: dict) -> dict[str, float | str]:
    """Where the last step's seconds went. Windows are read on the scheduler's prefetch
    thread, overlapping compute: only the compute's wait for them adds to the step."""
    r = last["result"]
    return {
        "pass 1 forward (sums)": r.forward_seconds,
        "pass 2 forward+backward": r.seconds - r.forward_seconds,
        "optimizer (Adam)": last["update"],
        "planning + overhead": last["wall"] - r.seconds - last["update"],
        "total": last["wall"],
        "  in passes: compute waiting for reads": r.read_wait_seconds,
        "  reads on the prefetch thread": r.read_seconds,
        "pass 2 windows kept from pass 1": f"{r.kept_windows} of {len(r.plan.tiles)}",
    }


def _run_torch(hw, steps: int, warmup: int, weights: Path) -> dict:
    import torch

    from gigamlx.backends.cuda_um.model import TorchGigaUNet

    torch.set_num_threads(2)
    model = TorchGigaUNet()
    model.load_mlx_layout(dict(np.load(weights)))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    image, mask = RandomRegion(hw, 3)[:, :], RandomRegion(hw, 0)[:, :]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255.0).contiguous()
    g = torch.from_numpy(mask).float()
    del image, mask

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = _soft_dice(model(x)[0, 0], g)
        loss.backward()
        optimizer.step()
        return loss.item()

    return _time_steps(step, steps, warmup)


def _run_mlx_whole(hw, steps: int, warmup: int) -> dict:
    import gigamlx.backends.mlx  # noqa: F401  (first: loads a fast BLAS before mlx.core)

    # isort: split
    import mlx.core as mx
    import mlx.nn as nn

    from gigamlx.backends import get_backend

    backend = get_backend("mlx")
    model = backend.build_model(SEED)
    optimizer = backend.make_optimizer(model, LR)
    image, mask = RandomRegion(hw, 3)[:, :], RandomRegion(hw, 0)[:, :]
    x = mx.array(image)[None].astype(mx.float32) / 255.0  # (1, H, W, 3)
    g = mx.array(mask).astype(mx.float32)
    mx.eval(x, g)
    del image, mask
    loss_and_grad = nn.value_and_grad(model, lambda m: _soft_dice(m(x)[0, ..., 0], g))

    def step() -> float:
        value, grads = loss_and_grad(model)
        optimizer.update(model, grads)
        mx.eval(value, model.parameters(), optimizer.state)  # sync point: the whole step
        return value.item()

    row = _time_steps(step, steps, warmup, mx.reset_peak_memory)
    return row | {"mlx_peak_bytes": mx.get_peak_memory()}


def run_one(kind: str, hw, steps: int, warmup: int, budget_bytes: int, weights: Path,
            cache_share: float = 0.0) -> dict:  # fmt: skip
    """One configuration in this process; returns its row."""
    row = {"kind": kind, "hw": list(hw), "pixels": hw[0] * hw[1], "warmup": warmup}
    row["rss_base_bytes"] = current_rss_bytes()
    if kind.startswith("gigamlx"):
        kernels = "mlx" if kind == "gigamlx-mlx" else "auto"  # mlx: the pure-MLX model path
        row |= _run_tiled(hw, steps, warmup, budget_bytes, cache_share, kernels)
    elif kind == "torch":
        row |= _run_torch(hw, steps, warmup, weights)
    else:
        row |= _run_mlx_whole(hw, steps, warmup)
    row["gflops"] = flop_per_step(kind, row["pixels"], row.get("tiles", 1)) / row["seconds"] / 1e9
    return row | {"rss_peak_bytes": peak_rss_bytes()}


def _in_subprocess(kind: str, hw, steps: int, warmup: int, budget_bytes: int, weights,
                   cache_share: float) -> dict:  # fmt: skip
    cmd = [sys.executable, __file__, "--one", f"{kind}:{hw[0]}:{hw[1]}", "--steps", str(steps)]
    cmd += ["--warmup", str(warmup), "--budget-bytes", str(budget_bytes), "--weights", weights]
    cmd += ["--cache-share", str(cache_share)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        if done.returncode == -9:
            why = "killed (SIGKILL: out of memory?)"
        return {"kind": kind, "hw": list(hw), "error": why}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _needs_bytes(kind: str, pixels: int, rows: list[dict]) -> float:
    """Estimated peak RSS of a whole-image peer: base + bytes/px of its largest measured run
    (the prior from the issue only until a large enough run has been measured)."""
    seen = [r for r in rows if r["kind"] == kind and "rss_peak_bytes" in r]
    per_px, base = PRIOR_BYTES_PER_PX[kind], 0.5e9
    if seen and seen[-1]["pixels"] >= TRUST_PX:
        base = seen[-1]["rss_base_bytes"] or 0.0  # None: no RSS reading; all of the peak counts
        per_px = (seen[-1]["rss_peak_bytes"] - base) / seen[-1]["pixels"]
    return base + per_px * pixels


def _add_ratios(rows: list[dict]) -> None:
    """speed-up = torch s/step / ours; memory ratio = our peak RSS / torch's, same image."""
    torch_rows = {tuple(r["hw"]): r for r in rows if r["kind"] == "torch" and "seconds" in r}
    for r in rows:
        base = torch_rows.get(tuple(r["hw"]))
        if base and "seconds" in r and r["kind"] != "torch":
            r["speedup_vs_torch"] = base["seconds"] / r["seconds"]
            r["rss_ratio_vs_torch"] = r["rss_peak_bytes"] / base["rss_peak_bytes"]


def _gb(n) -> str:
    return "" if n is None else f"{n / 1e9:.2f}"


COLUMNS = ("image", "kind", "tiles", "s/step", "steps", "RSS GB", "MLX GB", "loss", "GFLOP/s",
           "% sgemm", "user s", "sys s", "faults", "speed-up", "RSS vs torch", "note")  # fmt: skip


def _cells(r: dict, sgemm: float) -> list[str]:
    """One measured row's cells (all columns but the note)."""
    tiles = f"{r['tile_hw'][0]}x{r['tile_hw'][1]} ×{r['tiles']}" if "tiles" in r else "whole"
    speedup, ratio, use = r.get("speedup_vs_torch"), r.get("rss_ratio_vs_torch"), r["per_step"]
    return [
        "x".join(map(str, r["hw"])), r["kind"], tiles, f"{r['seconds']:.2f}",
        f"{len(r['step_seconds'])}+{r['warmup']}w", _gb(r["rss_peak_bytes"]),
        _gb(r.get("mlx_peak_bytes")), f"{r['loss']:.6f}", f"{r['gflops']:.1f}",
        f"{100 * r['gflops'] / sgemm:.1f}%", f"{use['user_s']:.2f}", f"{use['system_s']:.2f}",
        f"{use['minor_faults'] / 1e3:.0f}k", f"{speedup:.2f}×" if speedup else "",
        f"1/{1 / ratio:.1f}" if ratio else "",
    ]  # fmt: skip


def _table(rows: list[dict], budget_bytes: int, sgemm: float) -> Table:
    title = (f"training step, exact soft Dice; gigamlx budget {_gb(budget_bytes)} GB; "
             f"numpy sgemm {sgemm:.0f} GFLOP/s; CPU seconds and page faults per step")  # fmt: skip
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for r in rows:
        if "seconds" not in r:
            note = r.get("skipped") or r.get("error", "failed")
            table.add_row("x".join(map(str, r["hw"])), r["kind"], *[""] * 13, note)
            continue
        table.add_row(*_cells(r, sgemm), "")
    return table


def _profile_table(row: dict) -> Table:
    total = row["profile"]["total"]
    table = Table(title=f"profile of one {row['hw'][0]}x{row['hw'][1]} gigamlx step")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for phase, seconds in row["profile"].items():
        if isinstance(seconds, str):  # windows pass 2 did not read again
            table.add_row(phase, seconds, "")
            continue
        table.add_row(phase, f"{seconds:.2f}", f"{100 * seconds / total:.0f}%")
    return table


def _write_weights(path: Path) -> None:
    """The MLX model's initial weights, for the PyTorch peer (which does not import MLX)."""
    import gigamlx.backends.mlx  # noqa: F401  (first: loads a fast BLAS before mlx.core)
    from gigamlx.backends import get_backend

    backend = get_backend("mlx")
    np.savez(path, **backend.flat_params(backend.build_model(SEED)))


def _machine() -> dict:
    from gigamlx.backends.mlx.blas import blas_info

    return {"platform": f"{platform.system()} {platform.machine()}", "cpus": os.cpu_count(),
            "ram_bytes": RAM_BYTES, "blas": blas_info()._asdict(),
            "mlx": metadata.version("mlx"), "torch": metadata.version("torch")}  # fmt: skip


def _run_all(plan, budget_bytes: int, limit_bytes: float, cache_share: float) -> list[dict]:
    """Each (hw, kind, steps, warmup) in its own process, or a row saying why it was skipped."""
    rows: list[dict] = []
    log = Console(stderr=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / "weights.npz")
        _write_weights(Path(weights))
        for hw, kind, steps, warmup in plan:
            tiled = kind.startswith("gigamlx")
            needs = 0 if tiled else _needs_bytes(kind, hw[0] * hw[1], rows)
            if needs > limit_bytes:
                note = f"skipped: needs ~{needs / 1e9:.1f} GB"
                rows.append({"kind": kind, "hw": list(hw), "skipped": note})
            else:
                log.print(f"running {kind} {hw[0]}x{hw[1]}: {warmup} warm-up + {steps} steps")
                rows.append(
                    _in_subprocess(kind, hw, steps, warmup, budget_bytes, weights, cache_share)
                )
            log.print({k: v for k, v in rows[-1].items() if k != "profile"})
    _add_ratios(rows)
    return rows


@app.command()
def main(
    sizes: str = typer.Option("2048,4096,8192", help="square sides, multiples of 64"),
    big: str = typer.Option(DEFAULTS.region, help="HxW region for gigamlx alone; '' to skip"),
    steps: int = typer.Option(3, help="timed steps per row (median reported)"),
    warmup: int = typer.Option(1, help="untimed steps before them"),
    big_steps: int = typer.Option(1, help="timed steps of the --big region"),
    big_warmup: int = typer.Option(0, help="untimed steps of the --big region"),
    budget: str = typer.Option(
        DEFAULT_MEMORY_BUDGET, help="memory budget of the tiled (gigamlx) runs"
    ),
    cache_share: float = typer.Option(
        0.0, help="MLX buffer cache of the tiled runs, share of the budget (0: the scheduler's)"
    ),
    max_rss_gb: float = typer.Option(0.0, help="skip peers needing more RSS (0: 75% of RAM)"),
    json_out: Path = typer.Option(Path("out/bench.json"), "--json", help="where to write rows"),
    markdown: Path | None = typer.Option(
        None, help="rewrite this script's section of this file (e.g. docs/benchmarks.md)"
    ),
    one: str = typer.Option("", hidden=True, help="internal: run KIND:H:W in this process"),
    budget_bytes: int = typer.Option(0, hidden=True),
    weights: str = typer.Option("", hidden=True),
) -> None:
    """gigamlx tiled vs PyTorch CPU eager and MLX whole-image steps, one process per row."""
    if one:
        kind, h, w = one.split(":")
        row = run_one(kind, (int(h), int(w)), steps, warmup, budget_bytes, weights, cache_share)
        print(json.dumps(row))
        return
    sides = [int(s) for s in sizes.split(",") if s]
    if any(s % 64 for s in sides):
        raise typer.BadParameter("whole-image peers need sides that are multiples of 64")
    plan = [((s, s), kind, steps, warmup) for s in sides for kind in KINDS]
    if big:
        plan.append(
            (tuple(int(n) for n in big.lower().split("x")), "gigamlx", big_steps, big_warmup)
        )
    budget_bytes = parse_bytes(budget)
    sgemm = sgemm_gflops(2048)
    rows = _run_all(plan, budget_bytes, max_rss_gb * 1e9 or 0.75 * RAM_BYTES, cache_share)
    tables = [_table(rows, budget_bytes, sgemm)]
    tables += [_profile_table(row) for row in [r for r in rows if "profile" in r][-1:]]
    console = Console(width=max(Console().width, 200))  # a redirected table stays one line a row
    for table in tables:
        console.print(table)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": _machine(), "budget_bytes": budget_bytes, "sgemm_gflops": sgemm,
              "cache_share": cache_share, "rows": rows}  # fmt: skip
    json_out.write_text(json.dumps(result, indent=2))
    if markdown:
        from benchmarks_md import publish  # scripts/benchmarks_md.py

        publish(markdown, "bench.py", MARKDOWN_TITLE, MARKDOWN_WHAT, tables, sgemm)


if __name__ == "__main__":
    app()
