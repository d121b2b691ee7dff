"""`gigamlx train`: options built from TrainConfig's defaults; the session does the rest."""

from __future__ import annotations

from pathlib import Path

import typer

from gigamlx.cli.common import app, err, progress_bar, setup_logging, user_errors
from gigamlx.core.config import DEFAULTS, RANK_TIMEOUT_S, TrainConfig, help_of


def _typed_options(ctx: typer.Context) -> dict:
    """TrainConfig fields the user typed on the command line (they override a resumed run)."""

    def typed_here(name: str) -> bool:
        # by name: typer may bring its own copy of click, with its own ParameterSource enum
        return getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"

    fields = set(DEFAULTS.to_dict())
    typed = {name: v for name, v in ctx.params.items() if name in fields and typed_here(name)}
    return typed


def _as_config(values: dict) -> dict:
    """CLI values as TrainConfig values: paths as strings, DATA as a tuple."""
    for name in ("data", "val"):
        if name in values:
            values[name] = tuple(str(p) for p in values[name] or ())
    return {name: str(v) if isinstance(v, Path) else v for name, v in values.items()}


@app.command()
def train(
    ctx: typer.Context,
    data: list[Path] = typer.Argument(
        None, help="ingested slide stores (default: a synthetic slide)"
    ),
    region: str = typer.Option(DEFAULTS.region, help=help_of("region")),
    steps: int = typer.Option(DEFAULTS.steps, help=help_of("steps")),
    memory_budget: str = typer.Option(DEFAULTS.memory_budget, help=help_of("memory_budget")),
    loss: str = typer.Option(DEFAULTS.loss, help=help_of("loss")),
    lr: float = typer.Option(DEFAULTS.lr, help=help_of("lr")),
    seed: int = typer.Option(DEFAULTS.seed, help=help_of("seed")),
    out: Path = typer.Option(Path(DEFAULTS.out), help=help_of("out")),
    resume: bool = typer.Option(
        False,
        help="continue the run in --out from its newest checkpoint; options typed here "
        "(e.g. --steps, --accumulate) override the saved ones",
    ),
    checkpoint_every: int = typer.Option(
        DEFAULTS.checkpoint_every, help=help_of("checkpoint_every")
    ),
    accumulate: int = typer.Option(DEFAULTS.accumulate, help=help_of("accumulate")),
    augment: bool = typer.Option(DEFAULTS.augment, help=help_of("augment")),
    pad: bool = typer.Option(DEFAULTS.pad, help=help_of("pad")),
    tile: int = typer.Option(None, help=help_of("tile"), show_default=False),
    backend: str = typer.Option(DEFAULTS.backend, help=help_of("backend")),
    device: str = typer.Option(DEFAULTS.device, help=help_of("device")),
    level: int = typer.Option(None, help=help_of("level"), show_default=False),
    mpp: float = typer.Option(None, help=help_of("mpp"), show_default=False),
    kernels: str = typer.Option(DEFAULTS.kernels, help=help_of("kernels")),
    val: list[Path] = typer.Option(None, help=help_of("val"), show_default=False),
    val_fraction: float = typer.Option(None, help=help_of("val_fraction"), show_default=False),
    val_every: int = typer.Option(DEFAULTS.val_every, help=help_of("val_every")),
    warmup: float = typer.Option(DEFAULTS.warmup, help=help_of("warmup")),
    lr_schedule: str = typer.Option(DEFAULTS.lr_schedule, help=help_of("lr_schedule")),
    lr_min: float = typer.Option(DEFAULTS.lr_min, help=help_of("lr_min")),
    color_jitter: float = typer.Option(DEFAULTS.color_jitter, help=help_of("color_jitter")),
    illumination: float = typer.Option(DEFAULTS.illumination, help=help_of("illumination")),
    normalize: bool = typer.Option(DEFAULTS.normalize, help=help_of("normalize")),
    profile: bool = typer.Option(False, help="print where the seconds of a step went"),
    rank_timeout: float = typer.Option(
        RANK_TIMEOUT_S, help="under mlx.launch: seconds a rank waits for the others before it stops"
    ),
    dump_weights: str = typer.Option(None, hidden=True, help="test hook: PATH with {rank}"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    verbose: bool = typer.Option(False, help="debug logging"),
) -> None:
    """Train on regions sampled from slides, one exact tiled step at a time.

    With no DATA, a synthetic 16384x65536 slide is generated once into ~/.cache/gigamlx
    (or $GIGAMLX_CACHE) and reused. Each step: a random region (flipped/rotated), exact loss
    and gradients over the whole region computed tile by tile within --memory-budget, one Adam
    update (learning rate warmed up, then decayed over --steps). Every --val-every steps and at
    the end the model is scored on --val stores and/or a held-out strip of each training slide
    (--val-fraction), beside Otsu on the same pixels; the best weights go to
    OUT/checkpoints/best. Checkpoints go to OUT/checkpoints; metrics to OUT/metrics.jsonl;
    Ctrl-C saves.
    Under `mlx.launch -n N` each rank trains on its share of the regions of every step and
    the gradients are averaged (docs/distributed.md); rank 0 alone writes OUT.
    """
    from gigamlx.train.session import train_session
    from gigamlx.train.stop import stop_on_signals

    setup_logging(verbose)
    fields = set(DEFAULTS.to_dict())
    config = TrainConfig(**_as_config({k: v for k, v in ctx.params.items() if k in fields}))
    # held to the very end: once a stop began, a late signal cannot cut the exit short
    with stop_on_signals(keep_after_stop=True) as stop, user_errors():
        if not resume:
            config.validate()
        train_session(
            config,
            resume,
            overrides=_as_config(_typed_options(ctx)),
            console=err,
            slide_progress=progress_bar("making the default synthetic slide (once)"),
            show_progress=not quiet,
            profile=profile,
            rank_timeout_s=rank_timeout,
            dump_weights=dump_weights,
            stop=stop,
        )
