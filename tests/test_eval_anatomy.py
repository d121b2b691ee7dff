"""eval/anatomy.py and scripts/error_anatomy.py: each wrong pixel lands where the scene says."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gigamlx.core.geometry import Box
from gigamlx.eval.anatomy import _boundary_steps, slide_anatomy
from gigamlx.eval.metrics import EvaluationError
from gigamlx.slide.store import open_store
from gigamlx.slide.writer import StoreWriter
from gigamlx.synth.render import scene_layers
from gigamlx.synth.scene import make_scene
from gigamlx.synth.slide import synth_slide

HW, SEED = (512, 768), 0  # fat, pen, dust and bubbles in one small slide
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "error_anatomy.py"


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """The slide and its layers, `tissue` its stored label (the drawn region and the glass it
    encloses)."""
    path = synth_slide(tmp_path_factory.mktemp("anatomy") / "s.zarr", HW, SEED, chunk_px=256)
    layers = scene_layers(make_scene(HW, SEED), np.arange(HW[0]), np.arange(HW[1]))
    return path, layers._replace(tissue=np.asarray(open_store(path).mask[:, :]) != 0)


def _png(path: Path, tissue: np.ndarray) -> Path:
    Image.fromarray(tissue.astype(np.uint8) * 255).save(path)
    return path


def _errors(anatomy) -> dict[str, int]:
    return {name: near + away for name, (near, away) in anatomy.errors.items() if near + away}


def test_the_label_itself_has_no_errors(slide, tmp_path):
    path, layers = slide
    anatomy = slide_anatomy(_png(tmp_path / "p.png", layers.tissue), path)
    assert anatomy.dice == 1.0 and _errors(anatomy) == {}
    assert anatomy.tissue_px == anatomy.predicted_px == int(layers.tissue.sum())


def test_enclosed_glass_missed_is_its_own_cause(slide, tmp_path):
    path, layers = slide
    drawn = scene_layers(make_scene(HW, SEED), np.arange(HW[0]), np.arange(HW[1])).tissue
    enclosed = int((layers.tissue & ~drawn).sum())
    assert enclosed > 0 and not (drawn & ~layers.tissue).any()
    anatomy = slide_anatomy(_png(tmp_path / "p.png", drawn), path)
    assert _errors(anatomy) == {"missed: enclosed": enclosed}


def test_errors_land_on_their_cause_and_cost_one_minus_dice(slide, tmp_path):
    path, layers = slide
    pen_on_glass = layers.pen & ~layers.tissue
    pred = (layers.tissue & ~layers.fat) | pen_on_glass
    anatomy = slide_anatomy(_png(tmp_path / "p.png", pred), path)
    assert _errors(anatomy) == {
        "missed: fat": int(layers.fat.sum()),
        "false: pen": int(pen_on_glass.sum()),
    }
    tissue, wrong = layers.tissue, pred != layers.tissue
    dice = 2 * (pred & tissue).sum() / (pred.sum() + tissue.sum())
    assert anatomy.dice == pytest.approx(dice, abs=1e-12)
    assert anatomy.cost(int(wrong.sum())) == pytest.approx(1 - dice, abs=1e-12)


def test_a_one_pixel_halo_is_all_boundary_error_at_distance_zero(slide, tmp_path):
    path, layers = slide
    t = np.pad(layers.tissue, 1)
    halo = t[1:-1, 1:-1] | t[:-2, 1:-1] | t[2:, 1:-1] | t[1:-1, :-2] | t[1:-1, 2:]
    anatomy = slide_anatomy(_png(tmp_path / "p.png", halo), path, edge_px=1)
    assert sum(away for _, away in anatomy.errors.values()) == 0  # all within 1 px
    assert sum(near for near, _ in anatomy.errors.values()) == int((halo & ~t[1:-1, 1:-1]).sum())
    n, wrong = anatomy.profile[0]
    assert wrong == n > 0  # every first glass pixel, and nothing else
    assert all(w == 0 for d, (_, w) in anatomy.profile.items() if d != 0)


def test_blocks_give_the_whole_slides_numbers(slide, tmp_path):
    path, layers = slide
    rng = np.random.default_rng(0)
    pred = layers.tissue ^ (rng.random(HW) < 0.02)  # errors everywhere, edges included
    png = _png(tmp_path / "p.png", pred)
    whole = slide_anatomy(png, path, block_px=1024)
    blocks = slide_anatomy(png, path, block_px=96)  # blocks that split the boundary's rings
    assert blocks.errors == whole.errors and blocks.profile == whole.profile


def test_boundary_steps_count_whole_pixels_out_and_in():
    tissue = np.zeros((1, 9), bool)
    tissue[0, 3:6] = True
    assert _boundary_steps(tissue, 12).tolist() == [[2, 1, 0, -1, -2, -1, 0, 1, 2]]


def test_bad_inputs_name_the_file_and_the_fix(slide, tmp_path):
    path, layers = slide
    with pytest.raises(EvaluationError, match=r"p\.png: \(512, 700\) px but .*same order"):
        slide_anatomy(_png(tmp_path / "p.png", layers.tissue[:, :700]), path)
    pred = _png(tmp_path / "p.png", layers.tissue)
    with pytest.raises(EvaluationError, match=r"p\.png is not a zarr store"):
        slide_anatomy(pred, pred)
    scanned = tmp_path / "scanned.zarr"
    with StoreWriter(scanned, HW, 256, attrs={"source": "openslide"}) as writer:
        writer.write_image(Box(0, 0, *HW), np.zeros((*HW, 3), np.uint8))
        writer.write_mask(Box(0, 0, *HW), layers.tissue.astype(np.uint8))
        writer.finish()
    with pytest.raises(
        EvaluationError, match=r"scanned\.zarr: not a synthetic slide.*gigamlx synth"
    ):
        slide_anatomy(pred, scanned)
    with pytest.raises(EvaluationError, match="--edge-px"):
        slide_anatomy(pred, path, edge_px=40)


def test_script_prints_the_tables_and_writes_json(slide, tmp_path):
    path, layers = slide
    spec = importlib.util.spec_from_file_location("error_anatomy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    png = _png(tmp_path / "p.png", layers.tissue & ~layers.fat)
    out = tmp_path / "a.json"
    result = CliRunner().invoke(module.app, [str(png), "--slides", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "missed: fat" in result.output and "Error rate by distance" in result.output
    data = json.loads(out.read_text())
    assert data["errors"]["missed: fat"]["boundary_px"] + data["errors"]["missed: fat"][
        "away_px"
    ] == int(layers.fat.sum())
    assert data["dice"] == pytest.approx(1 - data["errors"]["missed: fat"]["dice_cost"])
    assert len(data["boundary_profile"]) == 25
    two = CliRunner().invoke(module.app, [str(png), str(png), "--slides", str(path)])
    assert two.exit_code == 2 and "give one --slides store per prediction" in two.output
    assert open_store(path).attrs["source"] == "synth"
