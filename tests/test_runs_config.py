"""runs/config.py: the one home of every default (the CLI, the Python API and the scripts
read it), and saved configs that carry a format version, refuse what they do not know and
upgrade older formats by number."""

import importlib
import importlib.util
import inspect
import json
import pkgutil
import sys
from pathlib import Path

import pytest
import typer
from typer.models import ParameterInfo

import gigamlx
from gigamlx.cli import app
from gigamlx.runs import config as config_module
from gigamlx.runs.config import (
    CONFIG_FORMAT,
    DEFAULT_CHUNK_PX,
    DEFAULT_KERNELS,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_SLIDE_HW,
    DEFAULT_THRESHOLD,
    DEFAULTS,
    RANK_TIMEOUT_S,
    TrainConfig,
)

LEGACY = {"normalize": False, "illumination": 0.0}  # what format-1 runs without them did


def test_config_round_trips_with_its_format():
    saved = TrainConfig(data=("a.zarr",), steps=7).to_dict()
    assert saved["format"] == CONFIG_FORMAT
    assert TrainConfig.from_dict(json.loads(json.dumps(saved))) == TrainConfig(
        data=("a.zarr",), steps=7
    )


def test_config_unknown_keys_are_refused_by_name():
    saved = DEFAULTS.to_dict() | {"foo": 1, "bar": 2}
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict(saved, source="runs/x/config.json")
    assert str(error.value) == (
        "runs/x/config.json: unknown keys bar, foo (written by a newer gigamlx? this one reads "
        f"config format ≤ {CONFIG_FORMAT})"
    )


def test_config_of_a_newer_format_is_refused():
    saved = DEFAULTS.to_dict() | {"format": CONFIG_FORMAT + 1}
    with pytest.raises(ValueError, match=rf"config format {CONFIG_FORMAT + 1}.*newer gigamlx"):
        TrainConfig.from_dict(saved, source="runs/x/config.json")


@pytest.mark.parametrize("bad", [0, "2", None])
def test_config_format_must_be_a_known_number(bad):
    with pytest.raises(ValueError, match="runs/x/config.json: format"):
        TrainConfig.from_dict(DEFAULTS.to_dict() | {"format": bad}, source="runs/x/config.json")


def test_config_of_the_current_format_lacking_keys_is_refused():
    saved = DEFAULTS.to_dict()
    del saved["lr"], saved["seed"]
    with pytest.raises(ValueError, match=r"runs/x/config.json: missing keys lr, seed"):
        TrainConfig.from_dict(saved, source="runs/x/config.json")


def test_config_without_format_is_format_1_and_upgraded():
    """Format 1: config.json as written before formats. Its missing options are filled: the
    raw-RGB, even-light model for the two that changed what a run trains, defaults else."""
    saved = {k: v for k, v in DEFAULTS.to_dict().items() if k not in ("format", *LEGACY)}
    del saved["val_every"]
    config = TrainConfig.from_dict(saved)
    assert config == TrainConfig(**LEGACY)
    written = TrainConfig(normalize=True).to_dict()
    del written["format"]  # a format-1 file holding every option keeps them all
    assert TrainConfig.from_dict(written).normalize is True


def test_config_round_trips_the_moving_average_decay():
    saved = TrainConfig(ema_decay=0.995).to_dict()
    assert saved["ema_decay"] == 0.995 and DEFAULTS.ema_decay > 0  # on unless turned off
    assert TrainConfig.from_dict(json.loads(json.dumps(saved))).ema_decay == 0.995


@pytest.mark.parametrize("format_", [1, 2])
def test_config_from_before_the_moving_average_keeps_it_off(format_):
    """Runs written before --ema-decay kept no average: resumed, they go on without one."""
    saved = {k: v for k, v in DEFAULTS.to_dict().items() if k != "ema_decay"}
    if format_ == 1:
        del saved["format"]
    else:
        saved["format"] = 2
    config = TrainConfig.from_dict(saved)
    assert config.ema_decay == 0.0 and config.steps == DEFAULTS.steps
    with pytest.raises(ValueError, match="missing keys ema_decay"):  # format 3 holds it
        TrainConfig.from_dict(saved | {"format": 3})


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_config_refuses_a_decay_outside_0_to_1(decay):
    with pytest.raises(ValueError, match=r"--ema-decay must be in \[0, 1\)"):
        TrainConfig(ema_decay=decay).validate()


def test_config_format_1_refuses_unknown_keys_too():
    with pytest.raises(ValueError, match="unknown keys tile_px"):
        TrainConfig.from_dict({"steps": 3, "tile_px": 512}, source="old/config.json")


# --- one home for every default: the CLI, the Python API and the scripts read runs/config ---

SCRIPTS = Path(__file__).parents[1] / "scripts"
SHARED = {  # a parameter or option of this name, anywhere, defaults to this (or None)
    "memory_budget": DEFAULT_MEMORY_BUDGET,
    "budget": DEFAULT_MEMORY_BUDGET,
    "kernels": DEFAULT_KERNELS,
    "threshold": DEFAULT_THRESHOLD,
    "chunk": DEFAULT_CHUNK_PX,
    "chunk_px": DEFAULT_CHUNK_PX,
    "size_hw": DEFAULT_SLIDE_HW,
    "rank_timeout": RANK_TIMEOUT_S,
    "rank_timeout_s": RANK_TIMEOUT_S,
    "region": DEFAULTS.region,
    "big": DEFAULTS.region,
    "seed": DEFAULTS.seed,
}
CONSTANTS = {  # a module-level name like one of runs/config's must hold its value
    name: getattr(config_module, name)
    for name in dir(config_module)
    if name.startswith("DEFAULT_") or name == "RANK_TIMEOUT_S"
}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _modules() -> list:
    """Every gigamlx module (engines that need hardware excepted) and every script."""
    found = [gigamlx]
    for info in pkgutil.walk_packages(gigamlx.__path__, "gigamlx."):
        if info.name.endswith("__main__"):  # runs the command line when imported
            continue
        try:
            found.append(importlib.import_module(info.name))
        except ImportError:  # an engine this machine lacks (CUDA, Metal)
            continue
    return found + [_script(p.stem) for p in sorted(SCRIPTS.glob("*.py"))]


EXEMPT = {  # (callable, parameter) named like a shared default that means something else
    "ProbabilityMapWriter.chunk_px": "a probability map's chunk = its OME-TIFF tile (CHUNK_PX)",
}


def _defaults(thing) -> dict:
    """Parameter name -> default of a function, a class's constructor or a typer command
    (typer.Option(...) defaults unwrapped); parameters without one are left out."""
    try:
        parameters = inspect.signature(thing).parameters.values()
    except (TypeError, ValueError):
        return {}
    found = {}
    for p in parameters:
        default = p.default.default if isinstance(p.default, ParameterInfo) else p.default
        if default is not inspect.Parameter.empty and default is not ...:
            found[p.name] = default
    return found


def _callables(module) -> list:
    own = [
        value
        for value in vars(module).values()
        if (inspect.isfunction(value) or inspect.isclass(value))
        and getattr(value, "__module__", None) == module.__name__
    ]
    commands = [
        c.callback
        for v in vars(module).values()
        if isinstance(v, typer.Typer)
        and v.registered_commands
        and v.registered_commands[0].callback.__module__ == module.__name__
        for c in v.registered_commands
    ]  # fmt: skip  (the commands of an app, under the module that defines them)
    unique = {id(c): c for c in own + commands if c.__module__ == module.__name__}
    return list(unique.values())


def test_every_shared_default_is_core_configs():
    """Options, parameters and dataclass fields named like a shared default hold its value;
    the `train` command and the reproduction's Plan hold TrainConfig's for every field."""
    mirrors = {"train", "Plan"}
    fields = DEFAULTS.to_dict() | {"data": (), "val": ()}
    drift = []
    for module in _modules():
        for name, value in vars(module).items():
            if name in CONSTANTS and value != CONSTANTS[name]:
                drift.append(f"{module.__name__}.{name} = {value!r}: core has {CONSTANTS[name]!r}")
        for thing in _callables(module):
            for name, default in _defaults(thing).items():
                want = fields if thing.__name__ in mirrors and name in fields else SHARED
                if f"{thing.__qualname__}.{name}" in EXEMPT or name not in want:
                    continue
                if default is not None and _plain(default) != _plain(want[name]):
                    where = f"{module.__name__}.{thing.__qualname__}({name}={default!r})"
                    drift.append(f"{where}: runs/config has {want[name]!r}")
    assert not drift, "\n".join(drift)


def _plain(value):
    """A click default as to_dict writes it: paths as strings, lists for no values."""
    if value is None or isinstance(value, tuple | list):
        return [str(v) for v in value or ()]
    return str(value) if isinstance(value, Path) else value


def test_the_train_command_offers_every_option_at_its_default():
    """Every TrainConfig option the user can type starts at TrainConfig's default."""
    command = typer.main.get_command(app).commands["train"]
    options = {p.name: p.default for p in command.params}
    typed = {k: v for k, v in DEFAULTS.to_dict().items() if k in options and v is not None}
    drift = {k: (options[k], v) for k, v in typed.items() if _plain(options[k]) != v}
    assert len(typed) > 20 and not drift
