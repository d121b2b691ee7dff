"""The model that ships with gigamlx (runs/bundled.py): its card agrees with its weights,
`predict` uses it with no run, `train --init bundled` starts from it, `info --model bundled`
prints its card, scripts/bundle_model.py writes it, and a damaged bundle is a clear error."""

from __future__ import annotations

import fnmatch
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gigamlx.backends import get_backend
from gigamlx.cli import app
from gigamlx.core.spec import param_count
from gigamlx.infer.model import load_model
from gigamlx.runs.bundled import (
    CARD,
    MODELS_DIR,
    BundleError,
    load_bundled,
    read_card,
    write_bundle,
)
from gigamlx.runs.checkpoint import read_state, save_checkpoint
from gigamlx.runs.config import DEFAULTS, FINE_TUNE_LR, POSTPROCESS
from gigamlx.train.run import start_run

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bundle_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped bundle that $GIGAMLX_MODELS points at (free to change)."""
    folder = tmp_path / "models"
    shutil.copytree(MODELS_DIR, folder)
    monkeypatch.setenv("GIGAMLX_MODELS", str(folder))
    return folder


def _flat(model) -> dict:
    return get_backend("mlx").flat_params(model)


def _provenance(zarr_path: Path) -> dict:
    return json.loads((zarr_path / "zarr.json").read_text())["attributes"]["provenance"]


def test_bundled_card_and_weights_agree():
    bundle = load_bundled()
    expected = {k: list(v.shape) for k, v in _flat(get_backend("mlx").build_model(0)).items()}
    assert bundle.card["tensors"] == expected
    count = sum(v.size for v in bundle.weights.values())
    assert bundle.card["parameters"] == count == param_count() == 4492
    assert {"name", "trained_on", "threshold", "postprocess"} <= set(bundle.card)


def test_bundle_is_package_data():
    """pyproject's package-data globs match every file of gigamlx/models (so wheels ship them)."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = globs["package-data"]["gigamlx"]
    for path in MODELS_DIR.iterdir():
        name = path.relative_to(MODELS_DIR.parent).as_posix()
        assert any(fnmatch.fnmatch(name, g) for g in globs), name


def test_predict_with_no_run_uses_the_bundled_model(slide, tmp_path):
    card = read_card()
    result = runner.invoke(app, ["predict", slide, "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"bundled model {card['name']}" in result.output
    assert f"p >= {card['threshold']:g}" in result.output
    meta = _provenance(tmp_path / "o" / "s.zarr")
    assert meta["model"]["name"] == card["name"]
    assert meta["model"]["trained_on"] == card["trained_on"]
    assert meta["checkpoint"].endswith(card["weights"]) and meta["threshold"] == card["threshold"]
    _, model = load_model("bundled")
    for name, value in _flat(model).items():
        np.testing.assert_array_equal(value, load_bundled().weights[name])


def test_predict_takes_the_cards_threshold_and_postprocessing(slide, tmp_path, bundle_copy):
    bundle = load_bundled()
    card = bundle.card | {"threshold": 0.7, "postprocess": {"min_object_um2": 0.0}}
    write_bundle(bundle_copy, bundle.weights, card)
    result = runner.invoke(app, ["predict", "bundled", slide, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    meta = _provenance(tmp_path / "a" / "s.zarr")
    assert meta["threshold"] == 0.7 and meta["postprocess"]["min_object_um2"] == 0.0
    assert meta["postprocess"]["fill_holes_um2"] == POSTPROCESS.fill_holes_um2  # the default
    typed = ["--min-object-um2", "5", "--threshold", "0.6"]  # typed settings win
    result = runner.invoke(app, ["predict", slide, "--out", str(tmp_path / "b"), *typed])
    assert result.exit_code == 0, result.output
    meta = _provenance(tmp_path / "b" / "s.zarr")
    assert meta["threshold"] == 0.6 and meta["postprocess"]["min_object_um2"] == 5.0


def test_predict_with_a_run_is_unchanged(slide, weights, tmp_path):
    result = runner.invoke(app, ["predict", str(weights), slide, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "bundled" not in result.output
    meta = _provenance(tmp_path / "s.zarr")
    assert meta["model"] is None and meta["checkpoint"] == str(weights.resolve())


def _small_run(slide: str, out: Path, init: str):
    from factories import small_config

    return start_run(small_config(slide, out, 1), resume=False, init=init)


def test_train_init_bundled_starts_from_the_bundle(slide, tmp_path, weights):
    bundled = load_bundled().weights
    run = _small_run(slide, tmp_path / "b", "bundled")
    for name, value in _flat(run.model).items():
        np.testing.assert_array_equal(value, bundled[name])
    fresh = _flat(_small_run(slide, tmp_path / "f", "fresh").model)
    assert any(not np.array_equal(fresh[n], bundled[n]) for n in bundled)
    run = _small_run(slide, tmp_path / "p", str(weights))  # --init PATH
    from safetensors.numpy import load_file

    for name, value in load_file(str(weights)).items():
        np.testing.assert_array_equal(_flat(run.model)[name], value)


def test_cli_train_init_bundled_records_it(slide, tmp_path):
    out = tmp_path / "run"
    args = ["train", slide, "--init", "bundled", "--out", str(out), "--steps", "1"]
    args += ["--region", "256x320", "--tile", "128", "--val-fraction", "0", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    state = read_state(out / "checkpoints" / "step_0000001")
    assert state["init"] == f"bundled:{read_card()['name']}"
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 2 and "--init starts a run" in result.output
    result = runner.invoke(app, ["train", slide, "--init", str(tmp_path / "none"), "--out", "x"])
    assert result.exit_code == 2 and "no such file" in result.output


def test_cli_fine_tuning_takes_the_gentler_learning_rate_unless_lr_is_given(slide, tmp_path):
    base = [slide, "--steps", "1", "--region", "256x320", "--tile", "128"]
    base += ["--val-fraction", "0", "--quiet", "--checkpoint-every", "1"]
    for name, extra, lr in [
        ("bundled", ["--init", "bundled"], FINE_TUNE_LR),
        ("typed", ["--init", "bundled", "--lr", "0.02"], 0.02),
        ("fresh", [], DEFAULTS.lr),
    ]:
        out = tmp_path / name
        result = runner.invoke(app, ["train", *base, *extra, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "config.json").read_text())["lr"] == lr, name


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "gigaunet-4492.safetensors").unlink(), "weights .* are missing"),
        (lambda f: (f / CARD).unlink(), "card .* is missing"),
        (lambda f: (f / CARD).write_text("{not json"), "card .* is damaged"),
        (
            lambda f: (f / "gigaunet-4492.safetensors").write_bytes(b"x" * 100),
            "do not match its card",
        ),
    ],
)
def test_a_damaged_bundle_names_the_file_and_the_fix(bundle_copy, damage, message, slide, tmp_path):
    damage(bundle_copy)
    with pytest.raises(BundleError, match=message) as error:
        load_bundled()
    assert str(bundle_copy) in str(error.value) and "bundle_model.py" in str(error.value)
    result = runner.invoke(app, ["predict", slide, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "bundle_model.py" in result.output


def test_a_card_that_disagrees_with_its_weights_is_refused(bundle_copy):
    card = json.loads((bundle_copy / CARD).read_text())
    card["tensors"]["head.bias"] = [2]
    (bundle_copy / CARD).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="not the GigaUNet-4492 its card describes"):
        load_bundled()


def test_bundle_model_script_writes_card_and_info_prints_it(tmp_path, monkeypatch, weights):
    from bundle_model import make_card  # scripts/bundle_model.py
    from factories import small_config
    from safetensors.numpy import load_file

    config = small_config("a/train-1.zarr", tmp_path / "run", 9).to_dict()
    config |= {"trained_mpp": 0.5, "trained_level": 0}
    state = {"threshold": 0.65, "val_dice": 0.91, "weights": "ema"}
    save_checkpoint(tmp_path / "run", 7, load_file(str(weights)), {}, config, {}, "best", state)
    rows = [
        {
            "slide": f"h{n}.zarr",
            "dice": d,
            "dice_post": d + 0.01,
            "otsu_dice": 0.5,
            "morph_dice": 0.6,
        }
        for n, d in enumerate((0.81, 0.83))
    ]
    scores = tmp_path / "reproduce.json"
    scores.write_text(json.dumps({"heldout": rows, "dice_mean": 0.82, "dice_std": 0.01}))
    weights_in, card = make_card(tmp_path / "run", "test-model", None, "a note", scores)
    write_bundle(tmp_path / "models", weights_in, card)
    monkeypatch.setenv("GIGAMLX_MODELS", str(tmp_path / "models"))
    card = load_bundled().card
    assert card["threshold"] == 0.65 and card["threshold_from"] == "validation"
    assert card["training"]["step"] == 7 and card["training"]["data"] == ["train-1.zarr"]
    assert card["training"]["averaged"]  # best held the moving average
    assert card["trained_on"] == "1 slide(s): train-1.zarr"
    assert card["scores"]["heldout"] == rows and card["scores"]["dice_mean"] == 0.82
    result = runner.invoke(app, ["info", "--model", "bundled"])
    assert result.exit_code == 0, result.output
    for text in (
        "test-model",
        "averaged (EMA) weights of step 7",
        "p >= 0.65",
        "0.8100",
        "0.8200 ± 0.0100",
        "h1.zarr",
        "a note",
    ):
        assert text in result.output, text
    assert "test-model" in runner.invoke(app, ["info"]).output
    result = runner.invoke(app, ["info", "--model", "bundled", "--json"])
    assert json.loads(result.stdout)["name"] == "test-model"
    from bundle_model import write_markdown

    page = tmp_path / "page.md"
    page.write_text("# a page\n\nkept\n")
    write_markdown(page, card)
    text = page.read_text()
    assert "kept" in text and "| h1.zarr | 0.8300 | 0.8400 | 0.5000 | 0.6000 |" in text
