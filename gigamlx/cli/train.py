"""`gigamlx train`: options built from TrainConfig's defaults; the session does the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gigamlx.cli.common import (
    BackendName,
    Kernels,
    LossName,
    LrSchedule,
    app,
    err,
    progress_bar,
    setup_logging,
    user_errors,
)
from gigamlx.runs.config import DEFAULTS, FINE_TUNE_LR, RANK_TIMEOUT_S, TrainConfig, help_of


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
    data: Annotated[
        list[Path] | None,
        typer.Argument(help="ingested slide stores (default: a synthetic slide)"),
    ] = None,
    region: Annotated[str, typer.Option(help=help_of("region"))] = DEFAULTS.region,
    steps: Annotated[int, typer.Option(help=help_of("steps"))] = DEFAULTS.steps,
    memory_budget: Annotated[
        str, typer.Option(help=help_of("memory_budget"))
    ] = DEFAULTS.memory_budget,
    loss: Annotated[LossName, typer.Option(help=help_of("loss"))] = DEFAULTS.loss,
    lr: Annotated[float, typer.Option(help=help_of("lr"))] = DEFAULTS.lr,
    seed: Annotated[int, typer.Option(help=help_of("seed"))] = DEFAULTS.seed,
    out: Annotated[Path, typer.Option(help=help_of("out"))] = Path(DEFAULTS.out),
    resume: Annotated[
        bool,
        typer.Option(
            help="continue the run in --out from its newest checkpoint; options typed here "
            "(e.g. --steps, --accumulate) override the saved ones"
        ),
    ] = False,
    checkpoint_every: Annotated[
        int, typer.Option(help=help_of("checkpoint_every"))
    ] = DEFAULTS.checkpoint_every,
    accumulate: Annotated[int, typer.Option(help=help_of("accumulate"))] = DEFAULTS.accumulate,
    augment: Annotated[bool, typer.Option(help=help_of("augment"))] = DEFAULTS.augment,
    pad: Annotated[bool, typer.Option(help=help_of("pad"))] = DEFAULTS.pad,
    tile: Annotated[int | None, typer.Option(help=help_of("tile"), show_default=False)] = None,
    backend: Annotated[BackendName, typer.Option(help=help_of("backend"))] = DEFAULTS.backend,
    device: Annotated[str, typer.Option(help=help_of("device"))] = DEFAULTS.device,
    level: Annotated[int | None, typer.Option(help=help_of("level"), show_default=False)] = None,
    mpp: Annotated[float | None, typer.Option(help=help_of("mpp"), show_default=False)] = None,
    kernels: Annotated[Kernels, typer.Option(help=help_of("kernels"))] = DEFAULTS.kernels,
    val: Annotated[list[Path] | None, typer.Option(help=help_of("val"), show_default=False)] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help=help_of("val_fraction"), show_default=False)
    ] = None,
    val_every: Annotated[int, typer.Option(help=help_of("val_every"))] = DEFAULTS.val_every,
    warmup: Annotated[float, typer.Option(help=help_of("warmup"))] = DEFAULTS.warmup,
    lr_schedule: Annotated[
        LrSchedule, typer.Option(help=help_of("lr_schedule"))
    ] = DEFAULTS.lr_schedule,
    lr_min: Annotated[float, typer.Option(help=help_of("lr_min"))] = DEFAULTS.lr_min,
    color_jitter: Annotated[
        float, typer.Option(help=help_of("color_jitter"))
    ] = DEFAULTS.color_jitter,
    illumination: Annotated[
        float, typer.Option(help=help_of("illumination"))
    ] = DEFAULTS.illumination,
    normalize: Annotated[bool, typer.Option(help=help_of("normalize"))] = DEFAULTS.normalize,
    ema_decay: Annotated[float, typer.Option(help=help_of("ema_decay"))] = DEFAULTS.ema_decay,
    init: Annotated[
        str,
        typer.Option(
            help="initial weights: fresh (seeded), bundled (fine-tune the model that ships "
            "with gigamlx) or a run, checkpoint or .safetensors PATH; not with --resume"
        ),
    ] = "fresh",
    profile: Annotated[bool, typer.Option(help="print where the seconds of a step went")] = False,
    rank_timeout: Annotated[
        float,
        typer.Option(help="under mlx.launch: seconds a rank waits for the others before it stops"),
    ] = RANK_TIMEOUT_S,
    dump_weights: Annotated[
        str | None, typer.Option(hidden=True, help="test hook: PATH with {rank}")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    verbose: Annotated[bool, typer.Option(help="debug logging")] = False,
) -> None:
    """Train on regions sampled from slides, one exact tiled step at a time.

    With no DATA, a synthetic 16384x65536 slide is generated once into ~/.cache/gigamlx
    (or $GIGAMLX_CACHE) and reused. Each step: a random region (flipped/rotated), exact loss
    and gradients over the whole region computed tile by tile within --memory-budget, one Adam
    update (learning rate warmed up, then decayed over --steps). Every --val-every steps and at
    the end the model is scored on --val stores and/or a held-out strip of each training slide
    (--val-fraction), beside Otsu on the same pixels, and so is the moving average of the
    weights (--ema-decay); the best of either goes to OUT/checkpoints/best. Checkpoints go to
    OUT/checkpoints; metrics to OUT/metrics.jsonl; Ctrl-C saves.
    Under `mlx.launch -n N` each rank trains on its share of the regions of every step and
    the gradients are averaged (docs/distributed.md); rank 0 alone writes OUT.
    """
    from gigamlx.train.session import train_session
    from gigamlx.train.stop import stop_on_signals

    setup_logging(verbose)
    fields = set(DEFAULTS.to_dict())
    values = _as_config({k: v for k, v in ctx.params.items() if k in fields})
    if init != "fresh" and "lr" not in _typed_options(ctx):
        values["lr"] = FINE_TUNE_LR  # fine-tuning: a gentler peak rate unless --lr is given
    config = TrainConfig(**values)
    # held to the very end: once a stop began, a late signal cannot cut the exit short
    with stop_on_signals(keep_after_stop=True) as stop, user_errors():
        if not resume:
            config.validate()
        elif init != "fresh":
            raise ValueError("--init starts a run; --resume continues from its checkpoint")
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
            init=init,
        )
