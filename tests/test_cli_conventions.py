"""CLI conventions: --version, -h, completion, help that reflows, JSON to stdout, the BLAS
line only when asked, HxW in what is printed, and one Otsu detector for ingest and eval."""

import inspect
import json
import logging
import typing

import numpy as np
import pytest
import tifffile
import typer
from typer.main import get_command
from typer.testing import CliRunner

from gigamlx import __version__
from gigamlx.backends import BACKENDS, KERNELS
from gigamlx.cli import app
from gigamlx.cli import eval as eval_command
from gigamlx.core.losses import LOSSES
from gigamlx.eval.baseline import BASELINES, baseline_plane
from gigamlx.eval.scale import PRED_SCALES
from gigamlx.runs.config import LR_SCHEDULES
from gigamlx.slide.readers import BACKENDS as SLIDE_READERS
from gigamlx.slide.store import open_store
from gigamlx.synth.render import render
from gigamlx.synth.scene import make_scene

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def test_version_help_and_completion():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"gigamlx {__version__}"
    top = runner.invoke(app, ["-h"], env=WIDE)
    assert top.exit_code == 0 and "--install-completion" in top.output and "HxW" in top.output
    for command in ("train", "synth", "ingest", "predict", "eval", "info"):
        assert runner.invoke(app, [command, "-h"]).exit_code == 0, command


def test_every_parameter_is_annotated_style():
    """`x: Annotated[int, typer.Option(...)] = 3`: the default is the value, the type is true
    (`X | None` where None means "not given")."""
    callbacks = [c.callback for c in app.registered_commands] + [app.registered_callback.callback]
    for callback in callbacks:
        hints = typing.get_type_hints(callback, include_extras=True)
        for name, param in inspect.signature(callback).parameters.items():
            if name == "ctx":
                continue
            where = f"{callback.__module__}.{callback.__name__}({name})"
            assert typing.get_origin(hints[name]) is typing.Annotated, where
            assert not isinstance(param.default, typer.models.ParameterInfo), where
            if param.default is None:
                assert type(None) in typing.get_args(typing.get_args(hints[name])[0]), where


# (command, option) -> the one fixed set it takes
CHOICES = {
    ("train", "loss"): LOSSES,
    ("train", "backend"): BACKENDS,
    ("train", "kernels"): KERNELS,
    ("train", "lr_schedule"): LR_SCHEDULES,
    ("predict", "kernels"): KERNELS,
    ("ingest", "reader"): SLIDE_READERS,
    ("eval", "baseline"): BASELINES,
    ("eval", "pred_scale"): PRED_SCALES,
}


def _choices(param) -> tuple:
    """The values a typer parameter takes when its type is a Literal, else ()."""
    annotation = param.type_descriptor.annotation
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()


def test_fixed_choices_are_listed_in_help():
    commands = get_command(app).commands
    for (command, name), values in CHOICES.items():
        param = next(p for p in commands[command].params if p.name == name)
        assert _choices(param) == values, (command, name)
        text = runner.invoke(app, [command, "--help"], env=WIDE).output
        assert "|".join(values) in text, (command, name)
    # and no other option takes a choice the table does not know of
    listed = {
        (name, p.name) for name, command in commands.items() for p in command.params if _choices(p)
    }
    assert listed == set(CHOICES)
    assert typing.get_args(eval_command.Baseline) == BASELINES  # written out (no zarr at import)
    assert typing.get_args(eval_command.PredScale) == PRED_SCALES


@pytest.mark.parametrize(
    "args", [["train", "--loss", "dicee"], ["train", "--backend", "cuda"], ["ingest", "a", "b"]]
)
def test_a_typo_in_a_choice_is_typers_own_error(args):
    if args[0] == "ingest":
        args = [*args, "--reader", "openslid"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Invalid value for" in result.output, result.output
    assert "is not one of" in result.output and "Traceback" not in result.output


def test_help_paragraphs_reflow_instead_of_keeping_docstring_breaks():
    text = runner.invoke(app, ["train", "--help"], env=WIDE).output
    line = next(row for row in text.splitlines() if "With no DATA" in row)
    assert "and reused" in line  # the docstring breaks after "~/.cache/gigamlx"
    text = runner.invoke(app, ["eval", "--help"], env=WIDE).output
    assert "4096x4096" in text and "ingest --otsu" in text  # the Otsu definition is shown


def test_info_json():
    result = runner.invoke(app, ["info", "--json"])
    facts = json.loads(result.stdout)
    assert facts["model parameters"] == "4492" and "HxW" in facts["size convention"]


def test_blas_line_only_at_debug(monkeypatch, caplog):
    from gigamlx.backends.mlx import blas

    monkeypatch.setattr(blas, "_state", {})
    with caplog.at_level(logging.INFO, logger="gigamlx"):
        blas.preload_blas()
    assert "BLAS for MLX" not in caplog.text
    monkeypatch.setattr(blas, "_state", {})
    with caplog.at_level(logging.DEBUG, logger="gigamlx"):
        blas.preload_blas()
    assert "BLAS for MLX" in caplog.text


@pytest.fixture(scope="module")
def otsu_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("otsu")
    hw = (1100, 1300)  # two levels: the threshold is fitted on level 0 (<= 4096²)
    rgb, _ = render(make_scene(hw, 2), np.arange(hw[0]), np.arange(hw[1]))
    tifffile.imwrite(root / "s.tif", rgb, photometric="rgb", tile=(256, 256))
    result = runner.invoke(app, ["ingest", str(root / "s.tif"), str(root / "s.zarr"), "--otsu"])
    assert result.exit_code == 0, result.output
    assert "1100x1300 px (HxW)" in result.output
    return root / "s.zarr"


def test_ingest_otsu_and_eval_baseline_are_one_detector(otsu_store, caplog):
    store = open_store(otsu_store)
    assert store.level_count == 2
    with caplog.at_level(logging.INFO, logger="gigamlx"):
        baseline_plane("otsu", otsu_store)
    assert f"Otsu saturation threshold {store.attrs['otsu_threshold']}\n" in caplog.text + "\n"
    # eval scores its Otsu baseline against the mask ingest --otsu wrote: the same pixels
    result = runner.invoke(
        app, ["eval", str(otsu_store), "--masks", str(otsu_store), "--baseline", "otsu"]
    )
    assert result.exit_code == 0, result.output


def test_eval_json_to_stdout(tmp_path, otsu_store):
    args = ["eval", str(otsu_store), "--masks", str(otsu_store), "--baseline", "otsu"]
    result = runner.invoke(app, args + ["--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout holds the JSON alone; the table is on stderr
    assert report["slides"][0]["baseline"]["metrics"]["dice"] == 1.0
    assert not (tmp_path / "-").exists()


def test_synth_prints_hw(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "x.zarr"), "--size", "200x300"])
    assert result.exit_code == 0 and "200x300 px (HxW)" in result.output
    assert open_store(tmp_path / "x.zarr").image_hw == (200, 300)
