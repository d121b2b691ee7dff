"""Per-tensor gradient error of both tiled paths against a float64 whole-image pass.

The case of the exactness issue: a random uint8 RGB image, a mask of random discs, the
GigaUNet's weights plus noise (so the coarse layers' gradients are small sums with heavy
cancellation), 256 px tiles. Each cell is ||g - g64|| / ||g64|| for one tensor; the last
column is a whole-image float32 pass, the yardstick the contract is stated against
(docs/exactness.md). Ties are left in, as a user's data has them.

Usage:
    python scripts/exactness_table.py --noise 0.2 --json out/exactness.json
    python scripts/exactness_table.py --markdown docs/benchmarks.md   # its section there
    OPENBLAS_CORETYPE=Haswell python scripts/exactness_table.py   # another BLAS core
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

import gigamlx.backends.mlx  # noqa: F401  (first: loads a fast BLAS before mlx.core)
from gigamlx.backends.mlx.blas import blas_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the float64 reference
from reference import disc_case, float64_reference, mlx_whole_image, perturbed  # noqa: E402

from gigamlx.backends.mlx.backend import MLXBackend  # noqa: E402
from gigamlx.tiling.scheduler import tiled_step  # noqa: E402

MARKDOWN_TITLE = "Gradient exactness per tensor (exactness_table.py)"
MARKDOWN_WHAT = (
    "`||g - g64|| / ||g64||` per parameter tensor against a float64 whole-image pass, for the "
    "fused and the pure-MLX tiled paths and a whole-image float32 pass (the yardstick of "
    "docs/exactness.md)."
)


def relative_errors(grads: dict, reference: dict) -> dict[str, float]:
    return {
        name: float(np.linalg.norm(np.asarray(grads[name]) - ref) / np.linalg.norm(ref))
        for name, ref in reference.items()
    }


def main(
    hw: Annotated[str, typer.Option(help="image HxW")] = "640x1344",
    tile: Annotated[int, typer.Option(help="tile side, px")] = 256,
    noise: Annotated[float, typer.Option(help="weight noise, standard deviations")] = 0.2,
    seed: Annotated[int, typer.Option(help="image, mask and noise seed")] = 0,
    loss: Annotated[str, typer.Option(help="dice, bce or dice+bce")] = "dice",
    json_path: Annotated[Path, typer.Option("--json", help="where to write the rows")] = Path(
        "out/exactness.json"
    ),
    markdown: Annotated[
        Path | None,
        typer.Option(help="rewrite this script's section of this file (e.g. docs/benchmarks.md)"),
    ] = None,
) -> None:
    """Per-tensor relative gradient error, fused and pure-MLX tiled vs whole float32."""
    h, w = (int(v) for v in hw.lower().split("x"))
    image, mask = disc_case((h, w), seed)
    backend = MLXBackend("mlx")
    model = backend.build_model(seed)
    flat = perturbed(backend.flat_params(model), noise, seed)
    backend.load_params(model, flat)
    _, reference, _ = float64_reference(flat, image, mask, loss)
    columns = {}
    for path in ("fused", "mlx"):
        result = tiled_step(MLXBackend(path), model, image, mask, loss, tile)
        columns[path] = relative_errors(result.grads, reference)
    _, whole = mlx_whole_image(model, image, mask, loss)
    columns["whole float32"] = relative_errors(whole, reference)

    environment = {k: os.environ.get(k, "") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS")}
    environment["blas"] = blas_info().name
    table = Table(title=f"{hw} tile {tile}, noise {noise}, seed {seed}, {loss}; {environment}")
    table.add_column("tensor")
    for name in columns:
        table.add_column(name, justify="right")
    table.add_column("|g64|", justify="right")
    for name in sorted(reference):
        cells = [f"{columns[c][name]:.1e}" for c in columns]
        table.add_row(name, *cells, f"{np.linalg.norm(reference[name]):.1e}")
    Console().print(table)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps(
            {
                "case": {"hw": hw, "tile": tile, "noise": noise, "seed": seed, "loss": loss},
                "environment": environment,
                "errors": columns,
            },
            indent=1,
        )
    )
    if markdown:
        from benchmarks_md import publish  # scripts/benchmarks_md.py

        publish(markdown, "exactness_table.py", MARKDOWN_TITLE, MARKDOWN_WHAT, [table])


if __name__ == "__main__":
    typer.run(main)
