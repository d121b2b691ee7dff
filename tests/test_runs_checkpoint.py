"""Checkpoints: atomic, complete, prunable, and clear about corruption."""

import numpy as np
import pytest

from gigamlx.runs.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    save_checkpoint,
)


def _save(run_dir, step):
    weights = {"down1.weight": np.full((2, 16, 16, 3), step, np.float32)}
    optimizer = {"step": np.array(step, np.uint64), "down1.weight.m": np.zeros(3, np.float32)}
    return save_checkpoint(run_dir, step, weights, optimizer, {"lr": 0.1}, {"state": {"s": step}})


def test_checkpoint_round_trip(tmp_path):
    _save(tmp_path, 7)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.step == 7
    assert checkpoint.weights["down1.weight"][0, 0, 0, 0] == 7
    assert checkpoint.optimizer["step"] == 7
    assert checkpoint.config == {"lr": 0.1} and checkpoint.rng_state == {"state": {"s": 7}}


def test_newest_checkpoint_wins_and_prune_keeps_newest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000003", "step_0000004"]
    assert load_checkpoint(tmp_path).step == 4


def test_unfinished_checkpoint_is_invisible(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / "checkpoints" / ".tmp_step_0000002_123").mkdir()
    assert load_checkpoint(tmp_path).step == 1


def test_corrupt_checkpoint_names_the_folder(tmp_path):
    path = _save(tmp_path, 1)
    (path / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"step_0000001 is damaged.*checksum"):
        load_checkpoint(tmp_path)


def test_empty_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)


def test_load_weights_from_file_and_folder(tmp_path):
    path = _save(tmp_path, 5)
    assert load_weights(path / "weights.safetensors")["down1.weight"].shape == (2, 16, 16, 3)
    assert load_weights(tmp_path)["down1.weight"][0, 0, 0, 0] == 5


def test_checkpoint_state_carries_its_format(tmp_path):
    import json

    from gigamlx.runs.checkpoint import CHECKPOINT_FORMAT

    path = _save(tmp_path, 1)
    assert json.loads((path / "state.json").read_text())["format"] == CHECKPOINT_FORMAT


def _rewrite_state(path, change):
    """Edit state.json and drop the manifest (as a checkpoint written before manifests)."""
    import json

    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps(change(state)))
    (path / "checksums.sha256").unlink()


def test_checkpoint_of_a_newer_format_is_refused(tmp_path):
    from gigamlx.runs.checkpoint import CHECKPOINT_FORMAT

    path = _save(tmp_path, 1)
    _rewrite_state(path, lambda s: s | {"format": CHECKPOINT_FORMAT + 1})
    with pytest.raises(CheckpointError, match=r"step_0000001.*format \d+.*newer gigamlx"):
        load_checkpoint(tmp_path)


def test_checkpoint_without_format_is_format_1_and_loads(tmp_path):
    path = _save(tmp_path, 3)
    _rewrite_state(path, lambda s: {k: v for k, v in s.items() if k != "format"})
    assert load_checkpoint(tmp_path).step == 3
