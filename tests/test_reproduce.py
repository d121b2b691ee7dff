"""Smoke test of scripts/reproduce_paper.py's pipeline at a tiny size."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from rich.console import Console

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_reproduce_pipeline_tiny(tmp_path):
    script = _load_script()
    plan = script.Plan((256, 512), 1, (256, 256), 2, "256x256", steps=2, lr=1e-2)
    console = Console(width=120, record=True)
    result = script.reproduce(tmp_path, plan, tmp_path / "r.json", console)
    ours = result["ours"]
    assert ours["n_heldout"] == 2
    assert 0.0 <= ours["dice_mean"] <= 1.0 and 0.0 <= ours["otsu_dice_mean"] <= 1.0
    assert ours["seconds_per_step"] > 0 and ours["peak_rss_bytes"] > 0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["reference"]["dice_mean"] == 0.989 and saved["plan"]["steps"] == 2
    assert json.loads((tmp_path / "r.dice.json").read_text())["baseline"] == "otsu"
    text = console.export_text()
    assert "0.989 ± 0.005" in text and "Otsu Dice" in text
    heldout = sorted(p.name for p in (tmp_path / "slides").glob("heldout-*"))
    train = sorted(p.name for p in (tmp_path / "slides").glob("train-*"))
    assert len(heldout) == 2 and len(train) == 1
    assert {n.split("-")[2] for n in heldout}.isdisjoint({n.split("-")[2] for n in train})
