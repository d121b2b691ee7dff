"""A run's state in memory and its checkpoints: start fresh, resume from a checkpoint, save one
(train/run_dir.py: the folder itself and the configuration)."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gigamlx.backends import get_backend
from gigamlx.backends.base import Backend
from gigamlx.core.normalise import slide_norm
from gigamlx.infer.predict import slide_name
from gigamlx.runs.bundled import FRESH, initial_weights
from gigamlx.runs.checkpoint import (
    BEST,
    Checkpoint,
    CheckpointError,
    list_checkpoints,
    load_checkpoint_folder,
    prune_checkpoints,
    read_state,
    remove_stale_temps,
    save_checkpoint,
)
from gigamlx.runs.config import TrainConfig
from gigamlx.runs.files import write_text_atomic
from gigamlx.runs.outputs import probe_writable
from gigamlx.slide.magnification import LevelError, size_px
from gigamlx.tiling.budget import check_budget
from gigamlx.train.data import DataError, TrainingSlide, open_training_slides
from gigamlx.train.ema import WeightAverage
from gigamlx.train.regions import RegionSampler
from gigamlx.train.run_dir import CONFIG, METRICS, check_fresh, resolve_config
from gigamlx.train.validate import (
    BestChoice,
    Validator,
    heldout_areas,
    resolve_val_fraction,
    split_hw,
)

log = logging.getLogger(__name__)


@dataclass
class Run:
    config: TrainConfig
    backend: Backend
    model: Any
    optimizer: Any
    sampler: RegionSampler
    slides: list[TrainingSlide]
    step: int  # optimizer steps completed
    run_dir: Path
    validator: Validator | None = None  # rank 0 only
    best_val_dice: float = -1.0  # what the `best` checkpoint was kept for (BestChoice.dice)
    val_choice: tuple[int, BestChoice] | None = None  # (step, the trained weights' cut, fill)
    init: str = FRESH  # where the first weights came from (runs/bundled.py), in checkpoints
    ema: WeightAverage | None = None  # the moving average of the weights; None: --ema-decay 0

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS


def open_run(
    config: TrainConfig,
    checkpoint: Checkpoint | None,
    backend: Backend,
    slide_progress=None,
    writes: bool = True,
    resume: bool = False,
    init: str = FRESH,
) -> Run:
    """Build the run of a resolved `config` on `backend`, continuing `checkpoint` if given.

    Everything that can fail on the inputs (slides, region, memory budget) is checked before
    the first file is written.

    Args:
        slide_progress: progress callback for generating the default slide.
        writes: False on data-parallel ranks other than 0: they neither check nor write the
            run folder (rank 0 does, and only it writes checkpoints and metrics).
        resume: the run was asked to resume (said when a folder without checkpoint restarts).
        init: a new run's first weights: fresh (seeded), bundled, or a weights path.
    """
    run_dir = Path(config.out)
    if writes:
        remove_stale_temps(run_dir)  # of killed runs; the run lock keeps live ones out
    if checkpoint is None and writes:
        check_fresh(run_dir, resume)
    slides = open_training_slides(config.data, slide_progress, config.level, config.mpp)
    config, region_hw = _resolve_scale(config, slides)
    model = backend.build_model(config.seed)
    first, init = initial_weights(init) if checkpoint is None else (None, _init_of(checkpoint))
    if first is not None:
        _start_from(backend, model, first, init)
    if config.tile is None:
        check_budget(backend, model, config.budget_bytes)
    optimizer = backend.make_optimizer(model, config.lr)
    fraction = resolve_val_fraction(
        config.val_fraction, bool(config.val), [s.image_hw for s in slides], region_hw
    )
    train_hws = [split_hw(s.image_hw, fraction)[0] for s in slides]
    if config.normalize:  # each slide's statistics, from the part the run trains on
        normed = zip(slides, train_hws, strict=True)
        slides = [s._replace(norm=slide_norm(s.image, hw)) for s, hw in normed]
    sampler = RegionSampler(
        train_hws,
        region_hw,
        config.seed,
        config.augment,
        config.pad,
        config.color_jitter,
        config.illumination,
    )
    validator = _validator(config, slides, fraction, run_dir) if writes else None
    step = 0
    if checkpoint is not None:
        backend.load_params(model, checkpoint.weights)
        backend.load_optimizer_state(optimizer, checkpoint.optimizer)
        sampler.restore(checkpoint.rng_state)
        step = checkpoint.step
        log.info("resuming %s at step %d", checkpoint.path, step)
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
        for folder in (run_dir, run_dir / "checkpoints"):
            if folder.is_dir():
                probe_writable(folder)  # an unwritable folder fails now, not at the first save
        _truncate_metrics(run_dir / METRICS, step)
        write_text_atomic(run_dir / CONFIG, json.dumps(config.to_dict(), indent=2))
    best = read_state(run_dir / "checkpoints" / BEST) if checkpoint is not None else None
    best_dice = best.get("val_dice", -1.0) if best else -1.0
    run = Run(
        config, backend, model, optimizer, sampler, slides, step, run_dir, validator, best_dice
    )
    run.init = init
    run.ema = _weight_average(config, backend, model, checkpoint)
    return run


def _start_from(backend: Backend, model, weights: dict, init: str) -> None:
    """Load a new run's first weights (--init), refusing any that are not GigaUNet-4492's."""
    expected = {name: tuple(v.shape) for name, v in backend.flat_params(model).items()}
    if {name: tuple(v.shape) for name, v in weights.items()} != expected:
        raise CheckpointError(f"--init {init}: not GigaUNet-4492 weights (names or shapes differ)")
    backend.load_params(model, weights)
    log.info("starting from the weights of %s", init)


def _weight_average(
    config: TrainConfig, backend: Backend, model, checkpoint: Checkpoint | None
) -> WeightAverage | None:
    """The moving average of the weights: from the checkpoint's, else from the weights the
    run starts (or resumes) with; None when --ema-decay is 0. Every rank keeps the same."""
    if config.ema_decay == 0:
        return None
    if checkpoint is not None and checkpoint.ema is not None:
        updates = (read_state(checkpoint.path) or {}).get("ema_updates", checkpoint.step)
        return WeightAverage(config.ema_decay, checkpoint.ema, updates)
    if checkpoint is not None:
        log.info("%s holds no moving average: it starts from its weights", checkpoint.path)
    return WeightAverage(config.ema_decay, backend.flat_params(model))


def _init_of(checkpoint: Checkpoint) -> str:
    """Where a resumed run's first weights came from (runs before --init: fresh)."""
    return (read_state(checkpoint.path) or {}).get("init", FRESH)


def _validator(config: TrainConfig, slides, fraction: float, run_dir: Path) -> Validator | None:
    """Validation areas: the --val stores whole, plus each training slide's held-out strip."""
    areas = heldout_areas([slide_name(s.path) for s in slides], slides, fraction)
    if config.val:
        stores = open_training_slides(config.val, None, config.level, config.mpp)
        if config.normalize:
            stores = [s._replace(norm=slide_norm(s.image)) for s in stores]
        areas += heldout_areas([slide_name(s.path) for s in stores], stores, 1.0)
    if not areas:
        return None
    return Validator(areas, run_dir, config.tile, config.budget_bytes)


def save_best(run: Run, choice: BestChoice) -> Path:
    """Keep this step as RUN/checkpoints/best (never pruned): its weights.safetensors holds
    the weights `choice` names (the trained ones or their moving average, said in its
    state.json as "weights"), with the threshold and the tissue mask's post-processing
    validation chose for those weights. Every reader of `best` (predict, --init, the scripts)
    so gets the chosen weights and their cut; its optimizer state stays the trained weights'."""
    run.best_val_dice = choice.dice
    weights = run.ema.shadow if choice.weights == "ema" else None
    extra = {"val_dice": choice.dice, "weights": choice.weights, "threshold": choice.threshold}
    extra["val_dice_of"] = "tissue mask" if choice.of_mask else "map"
    extra["postprocess"] = choice.postprocess()
    return _checkpoint(run, name=BEST, extra=extra, weights=weights)


def _checkpoint(
    run: Run, name: str | None = None, extra: dict | None = None, weights: dict | None = None
) -> Path:
    """Write the run's state after its last completed step (save_checkpoint's folder); a
    step validation scored carries the threshold and post-processing it chose (what `predict`
    cuts at and fills holes up to).

    Args:
        weights: written as its weights instead of the model's (`best` of the moving average).
    """
    if weights is None:
        weights = run.backend.flat_params(run.model)
    moments = run.backend.optimizer_state(run.optimizer)
    extra = {"init": run.init} | dict(extra or {})
    if "threshold" not in extra and run.val_choice and run.val_choice[0] == run.step:
        extra["threshold"] = run.val_choice[1].threshold
        extra["postprocess"] = run.val_choice[1].postprocess()
    ema = run.ema.shadow if run.ema is not None else None
    if run.ema is not None:
        extra["ema_updates"] = run.ema.updates
    state = (run.config.to_dict(), run.sampler.state())
    return save_checkpoint(
        run.run_dir, run.step, weights, moments, *state, name=name, extra=extra, ema=ema
    )


def _resolve_scale(config: TrainConfig, slides: list[TrainingSlide]):
    """(config with trained_level / trained_mpp filled in, region (h, w) in pixels).

    The µm/px trained at is the first store's (with --mpp every store is within 10% of it);
    a physical --region is converted at that resolution.
    """
    first = slides[0]
    trained_mpp = config.mpp or first.mpp
    size, unit = config.region_size
    try:
        region_hw = size_px(size, unit, trained_mpp, str(first.path))
    except LevelError as error:
        raise DataError(str(error)) from None
    levels = {s.level for s in slides}
    trained_level = first.level if len(levels) == 1 else None
    config = dataclasses.replace(config, trained_level=trained_level, trained_mpp=trained_mpp)
    log.info(
        "reading level %s at %s µm/px; region %dx%d px (HxW)",
        trained_level if trained_level is not None else "per store",
        f"{trained_mpp:.4g}" if trained_mpp else "unknown",
        *region_hw,
    )
    return config, region_hw


def start_run(
    config: TrainConfig,
    resume: bool,
    overrides: dict | None = None,
    slide_progress=None,
    init: str = FRESH,
) -> Run:
    """`resolve_config`, its backend, then `open_run`: a single-process run in one call."""
    config, checkpoint = resolve_config(config, resume, overrides)
    backend = get_backend(config.backend, config.device, config.kernels)
    return open_run(config, checkpoint, backend, slide_progress, resume=resume, init=init)


def save_run(run: Run) -> Path:
    """Checkpoint the run after its last completed step; keep only the newest few.

    A failed write (a full disk) leaves no partial folder and keeps every older checkpoint;
    the error carries a note saying which one to continue from.
    """
    try:
        path = _checkpoint(run)
    except OSError as error:
        saved = list_checkpoints(run.run_dir)
        kept = f"kept the last checkpoint {saved[-1]}" if saved else "no checkpoint was saved"
        error.add_note(f"step {run.step} was not saved, {kept}; free space, then --resume")
        raise
    try:
        load_checkpoint_folder(path)  # read back before any older one goes
    except CheckpointError as error:
        raise CheckpointError(f"{error} right after it was written; older ones are kept") from None
    prune_checkpoints(run.run_dir, run.config.keep_checkpoints, newest=path)
    return path


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps after the checkpoint: they are about to be redone.

    The file is replaced whole (a new file renamed over it): a crash keeps the old lines.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _step_of(line) <= step]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> float:
    """A metrics line's step; a line cut short by a crash counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
