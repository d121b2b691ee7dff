"""The one home for defaults (the shared constants and TrainConfig's fields: the CLI, the
Python API and the scripts read them), and the training config as saved beside every
checkpoint, with its format number. Why each default is what it is: docs/experiments.md."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from gigamlx.core.losses import check_loss
from gigamlx.core.memory import parse_bytes
from gigamlx.core.units import parse_size
from gigamlx.runs.files import format_of

# Defaults shared by the CLI, the Python API and the scripts: read from here, never retyped
# (tests/test_core_config.py fails when one drifts). TrainConfig's fields hold the rest.
DEFAULT_MEMORY_BUDGET = "2GB"  # training, validation and prediction alike
DEFAULT_KERNELS = "auto"  # the mlx backend's model path: fused where available
DEFAULT_THRESHOLD = 0.5  # p >= this is tissue, when no validation chose another
DEFAULT_TILE_PX = 1024  # tile side with neither a tile nor a memory budget given
DEFAULT_CHUNK_PX = 1024  # chunk side of the slide stores that synth and ingest write
DEFAULT_SLIDE_HW = (16384, 65536)  # the default synthetic slide: holds the default region
RANK_TIMEOUT_S = 600.0  # under mlx.launch: how long a rank waits for the others


# --init from trained weights: the from-scratch rate undid what the weights knew in the first
# steps, a tenth kept it (docs/experiments.md, "The first run from the bundled model")
FINE_TUNE_LR = 1e-3


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...] = field(default=(), metadata={"help": "ingested slide stores"})
    region: str = field(
        default="16000x64000",
        metadata={"help": "region per step, HxW: pixels of the level read, or 8000x32000um"},
    )
    steps: int = field(default=5000, metadata={"help": "optimizer steps to train to"})
    # smaller tiles overlap the reads better: faster and leaner than 4 GB (docs/experiments.md)
    memory_budget: str = field(
        default=DEFAULT_MEMORY_BUDGET, metadata={"help": "peak engine memory, e.g. 8GB"}
    )
    # soft Dice alone can saturate at "all tissue" from initialisation; BCE keeps 0.5 meaningful
    loss: str = field(default="dice+bce", metadata={"help": "dice+bce, dice or bce"})
    # the best peak rate on the benchmark's validation slides (docs/experiments.md)
    lr: float = field(
        default=1e-2,
        metadata={"help": f"Adam learning rate (peak; {FINE_TUNE_LR:g} when --init is not fresh)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of weights and region sampling"})
    out: str = field(default="runs/gigaunet", metadata={"help": "run directory"})
    checkpoint_every: int = field(default=25, metadata={"help": "steps between checkpoints"})
    keep_checkpoints: int = field(default=3, metadata={"help": "newest checkpoints kept"})
    augment: bool = field(default=True, metadata={"help": "random flips and 90° rotations"})
    pad: bool = field(
        default=True, metadata={"help": "use slides smaller than the region whole, zero-padded"}
    )
    accumulate: int = field(default=1, metadata={"help": "regions averaged per update"})
    tile: int | None = field(default=None, metadata={"help": "tile side px (overrides budget)"})
    backend: str = field(default="mlx", metadata={"help": "mlx or cuda-um"})
    device: str = field(default="auto", metadata={"help": "cuda-um only: auto, cuda or cpu"})
    # magnification: which pyramid level regions are read from; the run fills in trained_*,
    # and `predict` reads the level of each slide that matches trained_mpp
    level: int | None = field(
        default=None, metadata={"help": "pyramid level of the stores to read (0 = full res)"}
    )
    mpp: float | None = field(
        default=None, metadata={"help": "read the level at this µm/px (within 10%) of each store"}
    )
    trained_level: int | None = field(default=None, metadata={"help": "set by the run"})
    trained_mpp: float | None = field(default=None, metadata={"help": "set by the run"})
    # input standardisation (core/normalise.py): each slide by its own statistics
    normalize: bool = field(
        default=True,
        metadata={
            "help": "standardise each RGB channel by the slide's own mean and std (training, "
            "validation and prediction alike); --no-normalize feeds raw [0, 1] RGB"
        },
    )
    kernels: str = field(
        default=DEFAULT_KERNELS,
        metadata={
            "help": "mlx only: fused (compiled CPU kernels), mlx (pure MLX ops, what Metal "
            "runs) or auto (fused where available; $GIGAMLX_KERNELS sets the default)"
        },
    )
    # --- training to quality: validation, learning-rate schedule, colour augmentation ---
    val: tuple[str, ...] = field(
        default=(), metadata={"help": "held-out slide stores scored during training"}
    )
    val_fraction: float | None = field(
        default=None,
        metadata={
            "help": "share of each training slide's long side held out for validation "
            "(default: 0.1 when no --val is given and the regions still fit, else 0)"
        },
    )
    val_every: int = field(
        default=100, metadata={"help": "steps between validations (and at the end)"}
    )
    warmup: float = field(
        default=0.05, metadata={"help": "learning-rate warm-up, as a share of --steps"}
    )
    lr_schedule: str = field(
        default="cosine", metadata={"help": "decay after warm-up: cosine, linear or constant"}
    )
    lr_min: float = field(
        default=0.05, metadata={"help": "final learning rate, as a share of --lr"}
    )
    color_jitter: float = field(
        default=1.0,
        metadata={"help": "strength of the per-region stain/colour augmentation (0: off)"},
    )
    # on: without it darkened glass at the edges is taken for tissue (docs/experiments.md)
    illumination: float = field(
        default=1.0,
        metadata={
            "help": "strength of the per-region uneven-illumination augmentation (vignette "
            "and tilt, up to ~15 % dimmer at the edges; 0: off)"
        },
    )
    # validation every few steps is noisy; an average of the recent weights is steadier, and
    # `best` keeps whichever of the two scores higher (train/ema.py)
    ema_decay: float = field(
        default=0.99,
        metadata={
            "help": "decay of the exponential moving average of the weights, validated beside "
            "them (doubles validation time; 0: off)"
        },
    )

    @property
    def region_size(self) -> tuple[tuple[float, float], str | None]:
        """((h, w), unit): unit None for pixels, else a length unit ('um', 'mm', ...)."""
        return parse_size(self.region)

    @property
    def budget_bytes(self) -> int:
        return parse_bytes(self.memory_budget)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the bad value and the fix; return self."""
        self.region_size  # noqa: B018 - parses or raises
        self.budget_bytes  # noqa: B018
        check_loss(self.loss)
        for name in ("steps", "checkpoint_every", "keep_checkpoints", "accumulate"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        check_seed(self.seed)
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.tile is not None and (self.tile <= 0 or self.tile % 64):
            raise ValueError(f"--tile must be a positive multiple of 64, got {self.tile}")
        if self.level is not None and self.mpp is not None:
            raise ValueError("give --level or --mpp, not both")
        if (self.level is not None and self.level < 0) or (self.mpp is not None and self.mpp <= 0):
            raise ValueError("--level must be >= 0 and --mpp positive")
        self._validate_quality()
        return self

    def _validate_quality(self) -> None:
        if self.val_every < 1:
            raise ValueError(f"--val-every must be at least 1, got {self.val_every}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 0.5:
            raise ValueError(f"--val-fraction must be in [0, 0.5), got {self.val_fraction}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"--warmup is a share of --steps in [0, 1), got {self.warmup}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}")
        if not 0 <= self.lr_min <= 1:
            raise ValueError(f"--lr-min is a share of --lr in [0, 1], got {self.lr_min}")
        if not 0 <= self.color_jitter <= 3:
            raise ValueError(f"--color-jitter must be in [0, 3], got {self.color_jitter}")
        if not 0 <= self.illumination <= 3:
            raise ValueError(f"--illumination must be in [0, 3], got {self.illumination}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in [0, 1) (0: off), got {self.ema_decay}")

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step `step` (1-based): linear warm-up to --lr over
        the first `warmup` share of --steps, then the schedule's decay to lr * lr_min."""
        warm = round(self.warmup * self.steps)
        if step <= warm:
            return self.lr * step / warm
        if self.lr_schedule == "constant":
            return self.lr
        done = min(1.0, (step - warm) / max(1, self.steps - warm))
        shape = 0.5 * (1 + math.cos(math.pi * done)) if self.lr_schedule == "cosine" else 1 - done
        return self.lr * (self.lr_min + (1 - self.lr_min) * shape)

    def to_dict(self) -> dict:
        """The config as config.json and every checkpoint hold it, with its format number."""
        values = dataclasses.asdict(self) | {"data": list(self.data), "val": list(self.val)}
        return {"format": CONFIG_FORMAT} | values

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        """A saved config (`to_dict`'s, of this format or an older one, upgraded by number).

        Raises:
            ConfigError: naming `source` (the file) and the keys it does not know or lacks,
                or a format newer than this gigamlx reads.
        """
        values = upgrade_config(values, source)
        return cls(**{k: tuple(v) if k in ("data", "val") else v for k, v in values.items()})


class ConfigError(ValueError):
    """A saved config this gigamlx cannot read; the message names the file and why."""


# the format of a saved config: 1 = written before formats were (no "format" key); 2 = the
# key written, and every option present; 3 = with ema_decay. A change to the saved options
# adds a number and an upgrade from the one before, so every older run still loads.
CONFIG_FORMAT = 3
ADDED_IN_3 = ("ema_decay",)


def _upgrade_from_1(values: dict) -> dict:
    """Format 1 files come from many versions: options added since are filled in, with
    what runs did before the two that change what a model sees (raw RGB, even light)."""
    format_2 = {k: v for k, v in DEFAULTS.to_dict().items() if k not in ("format", *ADDED_IN_3)}
    return format_2 | {"normalize": False, "illumination": 0.0} | values


def _upgrade_from_2(values: dict) -> dict:
    """Runs before the moving average had none: off, so a resumed one goes on as it was."""
    return {"ema_decay": 0.0} | values


UPGRADES = {1: _upgrade_from_1, 2: _upgrade_from_2}  # format N -> N + 1


def upgrade_config(values: dict, source: str = "config") -> dict:
    """The options of a saved config of any known format, as this format has them."""
    try:
        version = format_of(values, CONFIG_FORMAT, "config")
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None
    for number in range(version, CONFIG_FORMAT):
        values = UPGRADES[number](values)
    values = {k: v for k, v in values.items() if k != "format"}
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown keys {', '.join(unknown)} (written by a newer gigamlx? this one "
            f"reads config format ≤ {CONFIG_FORMAT})"
        )
    missing = [k for k in known if k not in values]
    if missing:
        raise ConfigError(
            f"{source}: missing keys {', '.join(missing)} (config format {version} holds every "
            "option: the file was cut short or edited)"
        )
    return values


LR_SCHEDULES = ("cosine", "linear", "constant")
DEFAULTS = TrainConfig()
MAX_SEED = 2**64 - 1  # what every RNG behind --seed takes: numpy's PCG64, mlx, torch


def check_seed(seed: int) -> int:
    """Raise ValueError unless `seed` is an integer in 0..2**64-1; return it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed must be an integer from 0 to 2**64-1 ({MAX_SEED}), got {seed}")
    return seed


def parse_region(text: str) -> tuple[int, int]:
    """'16000x64000' -> (16000, 64000): rows x cols."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match or 0 in (int(match[1]), int(match[2])):
        raise ValueError(
            f"cannot read a region from {text!r}; write HxW in pixels, e.g. 16000x64000"
        )
    return int(match[1]), int(match[2])


def help_of(name: str, config: type = TrainConfig) -> str:
    """The help text of a field of `config` (TrainConfig, PostprocessConfig), for the CLI."""
    return next(f.metadata["help"] for f in dataclasses.fields(config) if f.name == name)


@dataclass(frozen=True)
class PostprocessConfig:
    """Tissue-mask post-processing of a thresholded map (slide/morphology.py): a closing, then
    hole filling, then small-object removal. Areas and lengths are physical, so a setting means
    the same at any pyramid level. The defaults are the gentlest settings within noise of the
    best mean Dice on the quick benchmark's validation slides (scripts/postprocess_ablation.py,
    docs/postprocessing.md)."""

    fill_holes_um2: float = field(
        default=1_000_000.0,
        metadata={"help": "fill holes enclosed by tissue up to this area, µm² (0: fill none)"},
    )
    min_object_um2: float = field(
        default=2_000.0,
        metadata={"help": "drop tissue pieces smaller than this area, µm² (0: keep all)"},
    )
    closing_um: float = field(
        default=16.0, metadata={"help": "morphological closing, disk radius in µm (0: none)"}
    )

    @property
    def active(self) -> bool:
        return any(value > 0 for value in dataclasses.astuple(self))

    def validate(self) -> PostprocessConfig:
        """Raise ValueError naming the bad setting; return self."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                option = f.name.replace("_", "-")
                raise ValueError(f"--{option} must be a finite number >= 0, got {value}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def recorded(cls, record: dict | None) -> PostprocessConfig:
        """The settings a checkpoint or model card recorded (the defaults where it names none;
        names this version does not know are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (record or {}).items() if k in known})


POSTPROCESS = PostprocessConfig()
# the morphological baseline detector (eval/baseline.py): the same steps on the Otsu mask, with
# the closing TIAToolbox's MorphologicalMasker uses (an ellipse of 32 µm across: radius 16 µm)
# and histolab's TissueMask habit of filling every hole inside the tissue (here up to 1 mm²)
MORPH_POSTPROCESS = PostprocessConfig(
    fill_holes_um2=1_000_000.0, min_object_um2=10_000.0, closing_um=16.0
)
