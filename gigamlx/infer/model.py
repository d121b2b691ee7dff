"""Which model predicts: the weights of a run, a checkpoint, a weights file or the bundled
model, and what its checkpoint records about itself (the resolution it was trained at, the
cut and the tissue-mask post-processing its validation chose).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from gigamlx.backends import get_backend
from gigamlx.runs.bundled import is_bundled, load_bundled, postprocess_of, read_card
from gigamlx.runs.checkpoint import STATE, CheckpointError, list_checkpoints, load_weights
from gigamlx.runs.config import (
    DEFAULT_KERNELS,
    DEFAULT_THRESHOLD,
    POSTPROCESS,
    PostprocessConfig,
)

RECORDED = "recorded"  # predict's post-processing: what the checkpoint recorded


class TrainedScale(NamedTuple):
    """What a checkpoint says about itself: its step, the level / µm per pixel it read,
    whether its model standardises each slide (core/normalise.py), and the threshold and
    tissue-mask post-processing its validation chose (None: not validated at that step, or
    saved before these were recorded)."""

    step: int | None
    mpp: float | None
    level: int | None
    normalize: bool = False
    threshold: float | None = None
    postprocess: PostprocessConfig | None = None


def trained_scale(checkpoint: str | os.PathLike) -> TrainedScale:
    """Step and training resolution recorded in a run or checkpoint folder, or the bundled
    model's card (a bare weights file records nothing: level 0, no mpp)."""
    if is_bundled(checkpoint):
        card = read_card()
        state = {"config": card, "threshold": card["threshold"]}
        state["step"] = card.get("training", {}).get("step")
        state["postprocess"] = postprocess_of(card).to_dict()
    else:
        state = _saved_state(checkpoint)
    config = state.get("config", {})
    post = state.get("postprocess")
    return TrainedScale(
        state.get("step"),
        config.get("trained_mpp"),
        config.get("trained_level"),
        bool(config.get("normalize", False)),  # runs saved before it: the raw-RGB model
        state.get("threshold"),
        PostprocessConfig.recorded(post) if post is not None else None,
    )


def cut_of(threshold: float | None, scale: TrainedScale) -> float:
    """The threshold to cut at: the one asked for, else the checkpoint's, else 0.5."""
    if threshold is not None:
        return threshold
    return scale.threshold if scale.threshold is not None else DEFAULT_THRESHOLD


def postprocess_for(scale: TrainedScale) -> PostprocessConfig:
    """The tissue mask's post-processing: the checkpoint's, else the package defaults."""
    return scale.postprocess if scale.postprocess is not None else POSTPROCESS


def _saved_state(checkpoint: str | os.PathLike) -> dict:
    """state.json of a checkpoint folder, or of a run folder's newest ({} for a weights file)."""
    path = Path(checkpoint)
    if path.is_dir() and not (path / STATE).exists():
        found = list_checkpoints(path)
        path = found[-1] if found else path
    if not (path / STATE).is_file():
        return {}
    return json.loads((path / STATE).read_text())


def load_model(
    checkpoint: str | os.PathLike, backend_name: str = "mlx", kernels: str = DEFAULT_KERNELS
):
    """(backend, model) with the weights of a run folder, checkpoint folder or .safetensors,
    or of the bundled model (`checkpoint` "bundled").

    Raises:
        CheckpointError: missing, unreadable, or not GigaUNet-4492 weights (names and shapes).
    """
    path = Path(checkpoint)
    if is_bundled(checkpoint):
        bundle = load_bundled()
        path, weights = bundle.weights_path, bundle.weights
    else:
        weights = _weights_of(path)
    backend = get_backend(backend_name, kernels=kernels)
    model = backend.build_model(0)
    expected = {name: v.shape for name, v in backend.flat_params(model).items()}
    found = {name: tuple(v.shape) for name, v in weights.items()}
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or sorted(
            n for n in expected if found[n] != expected[n]
        )
        raise CheckpointError(
            f"{path} does not hold GigaUNet-4492 weights (names or shapes differ: {wrong[:4]})"
        )
    backend.load_params(model, weights)
    return backend, model


def _weights_of(path: Path):
    """The weights of a run folder, checkpoint folder or .safetensors, or an error naming
    what to give instead."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: give a run folder or a .safetensors file")
    if path.is_dir() and not (path / STATE).exists() and not list_checkpoints(path):
        raise CheckpointError(
            f"{path} holds no checkpoint (no checkpoints/step_*/): give a run folder that has "
            "saved one, or a weights .safetensors file"
        )
    return load_weights(path)


def model_path(checkpoint: str | os.PathLike) -> Path:
    """The file or folder predicted with: the bundled model's weights file for "bundled"."""
    return load_bundled().weights_path if is_bundled(checkpoint) else Path(checkpoint)
