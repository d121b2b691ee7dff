"""Side-by-side training-step benchmark (issue 5): gigamlx tiled vs whole-image PyTorch and MLX.

Same weights (MLX init, seed 0), same loss (exact soft Dice), same random data, same Adam
update. Every configuration runs in its own process, so each peak RSS is its own.

    python scripts/bench.py                                   # 2048², 4096², 8192², 16000x64000
    python scripts/bench.py --sizes 512,1024 --big 1024x4096  # a quick look

Rows report the median s/step over --steps steps after --warmup warm-up steps (the region
given by --big runs --big-steps steps after --big-warmup, default 1 and 0: its single step
then includes the tile-size probes). Whole-image peers are skipped where their estimated peak
RSS (bytes/px measured at the smaller sizes) exceeds --max-rss-gb.
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
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False)
KINDS = ("torch", "gigamlx", "mlx-whole")  # torch first: the others' ratios refer to it
# peak RSS per pixel when nothing has been measured yet (issue 5; MLX measured at 4096²)
PRIOR_BYTES_PER_PX = {"torch": 190.0, "mlx-whole": 320.0}
TRUST_PX = 1024 * 1024  # below this, fixed allocations distort a measured bytes/px
BLOCK_PX = 512
LR = 1e-3
SEED = 0


class RandomRegion:
    """A lazily generated (H, W, 3) uint8 image, or (H, W) {0, 1} mask when channels is 0.

    Deterministic per 512² block (seeded by block index), so any window of the region reads
    the same pixels, and a 16000x64000 region never exists in memory whole.
    """

    def __init__(self, hw: tuple[int, int], channels: int, seed: int = SEED):
        self.shape = hw + ((channels,) if channels else ())
        self.dtype = np.dtype(np.uint8)
        self.seed, self.stream, self.seconds = seed, channels, 0.0

    def _block(self, by: int, bx: int) -> np.ndarray:
        shape = (BLOCK_PX, BLOCK_PX) + self.shape[2:]
        high = 256 if self.stream else 2
        rng = np.random.default_rng((self.seed, self.stream, by, bx))
        return rng.integers(0, high, shape, dtype=np.uint8)

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


def _whole(hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The same pixels the tiled run reads, materialized: (H, W, 3) uint8 and (H, W) uint8."""
    return RandomRegion(hw, 3)[0 : hw[0], 0 : hw[1]], RandomRegion(hw, 0)[0 : hw[0], 0 : hw[1]]


def _time_steps(step, steps: int, warmup: int, reset_peak=None) -> dict:
    """Run `step` (returns the loss) warmup + steps times; time the last `steps`.

    `reset_peak` runs after the warm-up, so engine peaks are those of the timed steps.
    """
    losses, seconds = [], []
    for index in range(warmup + steps):
        if index == warmup and reset_peak is not None:
            reset_peak()
        start = time.perf_counter()
        losses.append(step())
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    return {"loss": losses[0], "step_seconds": seconds, "seconds": statistics.median(seconds)}


def _run_tiled(hw, steps: int, warmup: int, budget_bytes: int) -> dict:
    import gigamlx.backends.mlx  # noqa: F401  (first: loads a fast BLAS before mlx.core)

    # isort: split
    import mlx.core as mx

    from gigamlx.backends import get_backend
    from gigamlx.tiling.scheduler import tiled_step

    backend = get_backend("mlx")
    model = backend.build_model(SEED)
    optimizer = backend.make_optimizer(model, LR)
    image, mask = RandomRegion(hw, 3), RandomRegion(hw, 0)
    last: dict = {}

    def step() -> float:
        source_read = [0.0]

        def progress(phase: str, done: int, total: int) -> None:
            if phase == "forward" and done == total:
                source_read[0] = image.seconds + mask.seconds

        image.seconds = mask.seconds = 0.0
        start = time.perf_counter()
        result = tiled_step(backend, model, image, mask, "dice", budget_bytes=budget_bytes,
                            progress=progress)  # fmt: skip
        before_update = time.perf_counter()
        backend.apply_gradients(model, optimizer, result.grads)
        end = time.perf_counter()
        pass1_share = source_read[0] / max(image.seconds + mask.seconds, 1e-12)
        last.update(result=result, update=end - before_update, wall=end - start, share=pass1_share)
        return result.loss

    row = _time_steps(step, steps, warmup, mx.reset_peak_memory)
    r = last["result"]
    row.update(tile_hw=list(r.plan.tile_hw), tiles=len(r.plan.tiles), profile=_profile(last))
    return row | {"mlx_peak_bytes": mx.get_peak_memory()}


def _profile(last: dict) -> dict[str, float]:
    """Where the last step's seconds went; reads are split between passes by the source's time."""
    r = last["result"]
    read1 = r.read_seconds * last["share"]
    read2 = r.read_seconds - read1
    return {
        "read (pass 1)": read1,
        "read (pass 2)": read2,
        "pass 1 forward": r.forward_seconds - read1,
        "pass 2 forward+backward": r.seconds - r.forward_seconds - read2,
        "optimizer": last["update"],
        "planning + overhead": last["wall"] - r.seconds - last["update"],
        "total": last["wall"],
    }


def _run_torch(hw, steps: int, warmup: int, weights: Path) -> dict:
    import torch

    from gigamlx.backends.cuda_um.model import TorchGigaUNet
    from gigamlx.losses import DICE_SMOOTH

    torch.set_num_threads(2)
    model = TorchGigaUNet()
    model.load_mlx_layout(dict(np.load(weights)))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    image, mask = _whole(hw)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255.0).contiguous()
    g = torch.from_numpy(mask).float()
    del image, mask

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        p = model(x)[0, 0]  # (H, W)
        loss = 1 - (2 * (p * g).sum() + DICE_SMOOTH) / (p.sum() + g.sum() + DICE_SMOOTH)
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
    from gigamlx.losses import DICE_SMOOTH

    backend = get_backend("mlx")
    model = backend.build_model(SEED)
    optimizer = backend.make_optimizer(model, LR)
    image, mask = _whole(hw)
    x = mx.array(image)[None].astype(mx.float32) / 255.0  # (1, H, W, 3)
    g = mx.array(mask).astype(mx.float32)
    mx.eval(x, g)
    del image, mask

    def loss_fn(m):
        p = m(x)[0, ..., 0]
        return 1 - (2 * (p * g).sum() + DICE_SMOOTH) / (p.sum() + g.sum() + DICE_SMOOTH)

    loss_and_grad = nn.value_and_grad(model, loss_fn)

    def step() -> float:
        value, grads = loss_and_grad(model)
        optimizer.update(model, grads)
        mx.eval(value, model.parameters(), optimizer.state)  # sync point: the whole step
        return value.item()

    row = _time_steps(step, steps, warmup, mx.reset_peak_memory)
    return row | {"mlx_peak_bytes": mx.get_peak_memory()}


def run_one(kind: str, hw, steps: int, warmup: int, budget_bytes: int, weights: Path) -> dict:
    """One configuration in this process; returns its row."""
    from gigamlx.memory import current_rss_bytes, peak_rss_bytes

    row = {"kind": kind, "hw": list(hw), "pixels": hw[0] * hw[1], "warmup": warmup}
    row["rss_base_bytes"] = current_rss_bytes()
    if kind == "gigamlx":
        row |= _run_tiled(hw, steps, warmup, budget_bytes) | {"budget_bytes": budget_bytes}
    elif kind == "torch":
        row |= _run_torch(hw, steps, warmup, weights)
    else:
        row |= _run_mlx_whole(hw, steps, warmup)
    return row | {"rss_peak_bytes": peak_rss_bytes()}


def _in_subprocess(kind: str, hw, steps: int, warmup: int, budget_bytes: int, weights) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{kind}:{hw[0]}:{hw[1]}", "--steps", str(steps)]
    cmd += ["--warmup", str(warmup), "--budget-bytes", str(budget_bytes), "--weights", weights]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        if done.returncode == -9:
            why = "killed (SIGKILL: out of memory?)"
        return {"kind": kind, "hw": list(hw), "error": why}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _needs_bytes(kind: str, pixels: int, rows: list[dict]) -> float:
    """Estimated peak RSS of a whole-image peer: base + bytes/px from the largest measured run."""
    seen = [r for r in rows if r["kind"] == kind and "rss_peak_bytes" in r]
    per_px, base = PRIOR_BYTES_PER_PX[kind], 0.5e9
    if seen and seen[-1]["pixels"] >= TRUST_PX:
        r = seen[-1]
        base = r["rss_base_bytes"]
        per_px = max(per_px, (r["rss_peak_bytes"] - base) / r["pixels"])
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


def _table(rows: list[dict], budget_bytes: int) -> Table:
    title = f"training step, soft Dice, gigamlx budget {budget_bytes / 1e9:.1f} GB"
    table = Table(title=title)
    for column in ("image", "kind", "tiles", "s/step", "RSS GB", "MLX GB", "loss", "speed-up"):
        table.add_column(column, justify="right")
    table.add_column("RSS / torch", justify="right")
    table.add_column("note")
    for r in rows:
        image, kind = "x".join(map(str, r["hw"])), r["kind"]
        if "seconds" not in r:
            table.add_row(image, kind, *[""] * 7, r.get("skipped") or r.get("error", "failed"))
            continue
        tiles = f"{r['tile_hw'][0]}x{r['tile_hw'][1]} ×{r['tiles']}" if "tiles" in r else "whole"
        speedup, ratio = r.get("speedup_vs_torch"), r.get("rss_ratio_vs_torch")
        table.add_row(
            image, kind, tiles, f"{r['seconds']:.2f}", _gb(r["rss_peak_bytes"]),
            _gb(r.get("mlx_peak_bytes")), f"{r['loss']:.6f}",
            f"{speedup:.2f}×" if speedup else "", f"1/{1 / ratio:.1f}" if ratio else "",
            f"median of {len(r['step_seconds'])} after {r['warmup']} warm-up",
        )  # fmt: skip
    return table


def _profile_table(row: dict) -> Table:
    total = row["profile"]["total"]
    table = Table(title=f"profile of one {row['hw'][0]}x{row['hw'][1]} gigamlx step")
    for column in ("phase", "seconds", "share"):
        table.add_column(column, justify="right")
    for phase, seconds in row["profile"].items():
        table.add_row(phase, f"{seconds:.2f}", f"{100 * seconds / total:.0f}%")
    return table


def _write_weights(path: Path) -> None:
    """The MLX model's initial weights, for the PyTorch peer (which must not import MLX)."""
    import gigamlx.backends.mlx  # noqa: F401  (first: loads a fast BLAS before mlx.core)
    from gigamlx.backends import get_backend

    backend = get_backend("mlx")
    np.savez(path, **backend.flat_params(backend.build_model(SEED)))


def _plan(sizes: list[int], big: str, steps: int, warmup: int, big_steps: int, big_warmup: int):
    plan = [((s, s), kind, steps, warmup) for s in sizes for kind in KINDS]
    if big:
        h, w = (int(n) for n in big.lower().split("x"))
        plan.append(((h, w), "gigamlx", big_steps, big_warmup))
    return plan


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _machine() -> dict:
    from gigamlx.backends.mlx.blas import blas_info

    return {"platform": f"{platform.system()} {platform.machine()}", "cpus": os.cpu_count(),
            "ram_bytes": _ram_bytes(), "blas": blas_info()._asdict(),
            "mlx": metadata.version("mlx"), "torch": metadata.version("torch")}  # fmt: skip


@app.command()
def main(
    sizes: str = typer.Option("2048,4096,8192", help="square sides, multiples of 64"),
    big: str = typer.Option("16000x64000", help="HxW region for gigamlx alone; '' to skip"),
    steps: int = typer.Option(3, help="timed steps per row (median reported)"),
    warmup: int = typer.Option(1, help="untimed steps before them"),
    big_steps: int = typer.Option(1, help="timed steps of the --big region"),
    big_warmup: int = typer.Option(0, help="untimed steps of the --big region"),
    budget: str = typer.Option("2GB", help="memory budget of the tiled (gigamlx) runs"),
    max_rss_gb: float = typer.Option(0.0, help="skip whole-image peers needing more (0: 75% RAM)"),
    json_out: Path = typer.Option(Path("out/bench.json"), "--json", help="where to write rows"),
    one: str = typer.Option("", hidden=True, help="internal: run KIND:H:W in this process"),
    budget_bytes: int = typer.Option(0, hidden=True),
    weights: str = typer.Option("", hidden=True),
) -> None:
    """gigamlx tiled vs PyTorch CPU eager and MLX whole-image steps, one process per row."""
    from gigamlx.memory import parse_bytes

    if one:
        kind, h, w = one.split(":")
        row = run_one(kind, (int(h), int(w)), steps, warmup, budget_bytes, Path(weights))
        print(json.dumps(row))
        return
    side_list = [int(s) for s in sizes.split(",") if s]
    if any(s % 64 for s in side_list):
        raise typer.BadParameter("whole-image peers need sides that are multiples of 64")
    budget_bytes = parse_bytes(budget)
    limit = max_rss_gb * 1e9 or 0.75 * _ram_bytes()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = str(Path(tmp) / "weights.npz")
        _write_weights(Path(weights_path))
        for hw, kind, n, w in _plan(side_list, big, steps, warmup, big_steps, big_warmup):
            needs = _needs_bytes(kind, hw[0] * hw[1], rows) if kind != "gigamlx" else 0
            skipped = {
                "kind": kind,
                "hw": list(hw),
                "skipped": f"skipped: needs ~{needs / 1e9:.0f} GB",
            }
            run = needs <= limit
            rows.append(
                _in_subprocess(kind, hw, n, w, budget_bytes, weights_path) if run else skipped
            )
            Console(stderr=True).print({k: v for k, v in rows[-1].items() if k != "profile"})
    _add_ratios(rows)
    Console().print(_table(rows, budget_bytes))
    profiled = [r for r in rows if "profile" in r]
    if profiled:
        Console().print(_profile_table(profiled[-1]))
    json_out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": _machine(), "budget_bytes": budget_bytes, "rows": rows}
    json_out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    app()
