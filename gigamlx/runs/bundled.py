"""The model that ships inside the package: GigaUNet-4492 weights (safetensors) and their card
(JSON: what they were trained on, the threshold and post-processing to use, measured Dice) in
gigamlx/models/. `gigamlx predict` uses it when no run is given; `train --init bundled` starts
from it; `gigamlx info --model bundled` prints the card. scripts/bundle_model.py writes both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors.numpy import load_file, save_file

from gigamlx.core.spec import param_count
from gigamlx.runs.checkpoint import CheckpointError, check_finite, load_weights
from gigamlx.runs.config import DEFAULT_THRESHOLD, PostprocessConfig
from gigamlx.runs.files import format_of, sha256_of, write_text_atomic

BUNDLED = "bundled"  # what --init, predict's model argument and info --model take
FRESH = "fresh"  # --init's default: the seeded initialisation
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
CARD = "gigaunet-4492.json"
WEIGHTS = "gigaunet-4492.safetensors"
CARD_FORMAT = 1  # the card's layout; a change adds a number
FIX = (
    "reinstall gigamlx (`pip install --force-reinstall .` from its source), or write the bundle "
    "again: python scripts/bundle_model.py RUN_DIR"
)


class BundleError(CheckpointError):
    """The bundled model is missing or damaged; the message names the file and the fix."""


class BundledModel(NamedTuple):
    card: dict
    weights: dict[str, np.ndarray]
    weights_path: Path


def models_dir() -> Path:
    """Where the bundle lives: gigamlx/models/ ($GIGAMLX_MODELS overrides it, for tests)."""
    return Path(os.environ.get("GIGAMLX_MODELS") or MODELS_DIR)


def is_bundled(model: str | os.PathLike | None) -> bool:
    return model is not None and str(model) == BUNDLED


def read_card(folder: Path | None = None) -> dict:
    """The bundled model's card. Raises BundleError naming the file and the fix."""
    path = (folder or models_dir()) / CARD
    try:
        card = json.loads(path.read_text())
        format_of(card, CARD_FORMAT, "model card")
        for key in ("name", "trained_on", "weights", "weights_sha256", "tensors", "threshold"):
            card[key]  # noqa: B018 - present or KeyError
    except FileNotFoundError:
        raise BundleError(f"the bundled model's card {path} is missing: {FIX}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BundleError(f"the bundled model's card {path} is damaged ({error}): {FIX}") from None
    return card


def load_bundled(folder: Path | None = None) -> BundledModel:
    """The card and the weights, checked against each other: the file's SHA-256, every tensor's
    name and shape, and the parameter count of GigaUNet-4492 (core/spec.py)."""
    folder = folder or models_dir()
    card = read_card(folder)
    path = folder / card["weights"]
    if not path.is_file():
        raise BundleError(f"the bundled model's weights {path} are missing: {FIX}")
    if sha256_of(path) != card["weights_sha256"]:
        raise BundleError(f"the bundled model's weights {path} do not match its card: {FIX}")
    try:
        weights = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        message = f"the bundled model's weights {path} are unreadable ({error}): {FIX}"
        raise BundleError(message) from None
    check_finite(weights, path)
    shapes = {name: list(v.shape) for name, v in weights.items()}
    count = sum(int(v.size) for v in weights.values())
    if shapes != card["tensors"] or count != param_count():
        raise BundleError(
            f"the bundled model's weights {path} are not the GigaUNet-4492 its card describes "
            f"({count} parameters, expected {param_count()}): {FIX}"
        )
    return BundledModel(card, weights, path)


def initial_weights(init: str) -> tuple[dict[str, np.ndarray] | None, str]:
    """(weights to start a run from, what to record): None for `fresh`, the bundle's for
    `bundled`, else those of a checkpoint folder, run folder or .safetensors file."""
    if init == FRESH:
        return None, FRESH
    if is_bundled(init):
        bundle = load_bundled()
        return bundle.weights, f"{BUNDLED}:{bundle.card['name']}"
    if not Path(init).exists():
        raise CheckpointError(
            f"--init {init}: no such file; give fresh, bundled, a run or checkpoint folder, "
            "or a weights .safetensors file"
        )
    return load_weights(Path(init)), str(Path(init).resolve())


def postprocess_of(card: dict) -> PostprocessConfig:
    """The post-processing the card says to use (the package defaults where it names none)."""
    return PostprocessConfig.recorded(card.get("postprocess"))


def provenance_record(card: dict) -> dict:
    """What a prediction records about the bundled model it used."""
    return {
        "name": card["name"],
        "trained_on": card["trained_on"],
        "weights_sha256": card["weights_sha256"],
        "threshold": card.get("threshold", DEFAULT_THRESHOLD),
        "postprocess": postprocess_of(card).to_dict(),
    }


def describe(card: dict) -> str:
    """One line: the model, what it learnt from, its cut and post-processing."""
    post = postprocess_of(card)
    return (
        f"bundled model {card['name']} (trained on {card['trained_on']}); tissue at "
        f"p >= {card['threshold']:g}; post-processing: holes filled up to "
        f"{post.fill_holes_um2:g} µm², pieces under {post.min_object_um2:g} µm² dropped, "
        f"closing {post.closing_um:g} µm"
    )


def write_bundle(folder: Path, weights: dict[str, np.ndarray], card: dict) -> tuple[Path, Path]:
    """Write the weights and the card (with the fields that describe the weights filled in)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WEIGHTS
    temp = folder / f".{WEIGHTS}.tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(temp))
    os.chmod(temp, 0o644)  # package data: readable by every user of an installed copy
    os.replace(temp, path)
    card = {"format": CARD_FORMAT} | card | {"weights": WEIGHTS}
    card["weights_sha256"] = sha256_of(path)
    card["parameters"] = sum(int(np.size(v)) for v in weights.values())
    card["tensors"] = {name: list(np.shape(v)) for name, v in sorted(weights.items())}
    write_text_atomic(folder / CARD, json.dumps(card, indent=2) + "\n")
    return path, folder / CARD


def card_facts(card: dict) -> dict[str, str]:
    """The card as `gigamlx info --model bundled` prints it: one line per fact."""
    training = card.get("training") or {}
    post = postprocess_of(card)
    facts = {
        "model": f"{card['name']} ({card.get('architecture', 'GigaUNet-4492')}, "
        f"{card.get('parameters', '?')} parameters)",
        "trained on": card["trained_on"],
        "recipe": f"{training.get('steps')} steps of {training.get('region')} regions, loss "
        f"{training.get('loss')}, lr {training.get('lr')}; {_weights_kind(training)} of step "
        f"{training.get('step')}"
        f" ({training.get('checkpoint')})",
        "validation Dice": f"{_number(training.get('val_dice'))} ({_val_source(training)})",
        "resolution": f"{card.get('trained_mpp') or '—'} µm/px (level "
        f"{card.get('trained_level')}); per-slide standardisation {card.get('normalize')}",
        "threshold": f"p >= {card['threshold']:g} ({card.get('threshold_from', 'card')})",
        "post-processing": f"fill holes <= {post.fill_holes_um2:g} µm², drop pieces < "
        f"{post.min_object_um2:g} µm², closing {post.closing_um:g} µm",
    }
    scores = card.get("scores")
    facts["held-out Dice"] = _summary(scores) if scores else "not measured (no scores on the card)"
    if card.get("note"):
        facts["note"] = card["note"]
    facts["weights"] = f"{card['weights']} (sha256 {card['weights_sha256'][:16]}...)"
    return facts


def _weights_kind(training: dict) -> str:
    """Which weights the card holds: the moving average (train/ema.py) or the raw ones."""
    return "averaged (EMA) weights" if training.get("averaged") else "weights"


SCORE_COLUMNS = ("slide", "dice", "dice_post", "otsu_dice", "morph_dice")


def score_rows(card: dict) -> list[list[str]]:
    """Per-slide Dice of the card (held-out synthetic slides, then any real ones), as text."""
    scores = card.get("scores") or {}
    rows = [*scores.get("heldout", ()), *card.get("real_slides", ())]
    return [[_number(row.get(key)) for key in SCORE_COLUMNS] for row in rows]


def _val_source(training: dict) -> str:
    if training.get("val"):
        return f"on {len(training['val'])} validation slide(s), picking the step and the cut"
    return f"on a held-out {training.get('val_fraction')} of each training slide"


def _summary(scores: dict) -> str:
    pairs = (("dice", "raw"), ("dice_post", "post-processed"), ("otsu", "Otsu"))
    parts = [
        f"{label} {scores[f'{key}_mean']:.4f} ± {scores.get(f'{key}_std') or 0:.4f}"
        for key, label in (*pairs, ("morph", "morphological"))
        if scores.get(f"{key}_mean") is not None
    ]
    count = len(scores.get("heldout", ()))
    return f"{'; '.join(parts)} (mean ± std over {count} synthetic slides; {scores['source']})"


def _number(value) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
