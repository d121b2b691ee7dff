"""Faults in checkpoints and run folders (issue 10): damaged or non-finite checkpoints fall
back to the newest valid one, foreign step folders are ignored, metrics are rewritten whole,
folders without a checkpoint start afresh, and a resumed run keeps what the user typed."""

import json
import logging
import os
import shutil
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
from factories import small_config
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from gigamlx.backends import get_backend
from gigamlx.cli import app
from gigamlx.infer.model import load_model
from gigamlx.runs import files
from gigamlx.runs.checkpoint import (
    MANIFEST,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from gigamlx.runs.config import CONFIG_FORMAT, TrainConfig
from gigamlx.train.loop import train
from gigamlx.train.run import start_run
from gigamlx.train.run_dir import METRICS, resolve_config

runner = CliRunner()
FILES = ["weights.safetensors", "optimizer.safetensors", "state.json", "ema.safetensors"]
_config = partial(small_config, checkpoint_every=1)  # these cases are about faults


@pytest.fixture(scope="module")
def trained(slide, tmp_path_factory):
    """A run with checkpoints at steps 2, 3 and 4 (kept: 3)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(start_run(_config(slide, out, 4), resume=False))
    return out


def _copy(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":  # four flipped bytes in the middle, as a failing disk would
        for offset in range(len(data) // 2, len(data) // 2 + 4):
            data[offset] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_newest_checkpoint_falls_back_with_warning(trained, tmp_path, caplog, name, how):
    run_dir = _copy(trained, tmp_path)
    _damage(run_dir / "checkpoints" / "step_0000004" / name, how)
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(run_dir).step == 3
    assert "step_0000004 is damaged" in caplog.text and "falling back to" in caplog.text
    assert "step_0000003" in caplog.text


def test_resume_past_a_damaged_checkpoint_matches_uninterrupted(trained, slide, tmp_path):
    run_dir = _copy(trained, tmp_path)
    _damage(run_dir / "checkpoints" / "step_0000004" / "weights.safetensors", "flip")
    run = start_run(_config(slide, run_dir, 4), resume=True)
    assert run.step == 3
    train(run)
    assert [p.name for p in list_checkpoints(run_dir)][-2:] == ["step_0000003", "step_0000004"]
    resumed, straight = load_checkpoint(run_dir), load_checkpoint(trained)
    for name, value in straight.weights.items():
        np.testing.assert_array_equal(resumed.weights[name], value)
        np.testing.assert_array_equal(resumed.ema[name], straight.ema[name])


@pytest.mark.parametrize(
    "name", ["weights.safetensors", "optimizer.safetensors", "ema.safetensors"]
)
def test_non_finite_checkpoint_is_rejected(trained, tmp_path, name):
    """NaN written with a matching checksum (a diverged save) is still refused."""
    path = _copy(trained, tmp_path) / "checkpoints" / "step_0000004"
    tensors = load_file(str(path / name))
    key = next(k for k, v in tensors.items() if v.dtype == np.float32 and v.size > 1)
    tensors[key][0] = np.nan
    save_file(tensors, str(path / name))
    (path / MANIFEST).write_text(
        "".join(f"{files.sha256_of(path / n)}  {n}\n" for n in FILES)
    )  # the checksums agree: only the NaN check can catch it
    with pytest.raises(CheckpointError, match=f"{name} is damaged: {key} holds NaN"):
        load_checkpoint(path)
    assert load_checkpoint(path.parent.parent).step == 3


def test_predict_falls_back_or_refuses(trained, tmp_path, caplog):
    run_dir = _copy(trained, tmp_path)
    newest = run_dir / "checkpoints" / "step_0000004"
    _damage(newest / "weights.safetensors", "flip")
    with caplog.at_level(logging.WARNING):
        backend, model = load_model(run_dir)
    assert "falling back to" in caplog.text
    expected = load_checkpoint(run_dir / "checkpoints" / "step_0000003").weights
    np.testing.assert_array_equal(backend.flat_params(model)["head.bias"], expected["head.bias"])
    with pytest.raises(CheckpointError, match="step_0000004 is damaged"):
        load_model(newest)  # a folder named explicitly is never swapped for another
    weights = dict(expected)
    weights["head.bias"] = np.full_like(weights["head.bias"], np.inf)
    save_file(weights, str(tmp_path / "inf.safetensors"))
    with pytest.raises(CheckpointError, match="head.bias holds NaN or infinite"):
        load_model(tmp_path / "inf.safetensors")


def test_cli_predict_with_every_checkpoint_damaged_is_one_line(trained, slide, tmp_path):
    run_dir = _copy(trained, tmp_path)
    for path in list_checkpoints(run_dir):
        _damage(path / "weights.safetensors", "truncate")
    result = runner.invoke(app, ["predict", str(run_dir), slide, "--out", str(tmp_path / "p")])
    assert result.exit_code == 2, result.output
    assert "no valid checkpoint" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "p").exists()


def test_checkpoint_without_manifest_still_loads(trained, tmp_path):
    """Checkpoints written before checksums existed load as before."""
    run_dir = _copy(trained, tmp_path)
    for path in list_checkpoints(run_dir):
        (path / MANIFEST).unlink()
    assert load_checkpoint(run_dir).step == 4


def test_only_own_step_folders_count_by_number(tmp_path):
    def save(step, name=None):
        weights = {"w": np.full(3, step, np.float32)}
        path = save_checkpoint(tmp_path, step, weights, {}, {}, {})
        if name:
            path.rename(path.with_name(name))

    save(9_999_999)
    save(10_000_000)  # sorts before step_9999999 by name
    save(5, "step_best")  # a user's copy
    save(6, "step_0000006 copy")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_9999999", "step_10000000"]
    assert load_checkpoint(tmp_path).step == 10_000_000
    prune_checkpoints(tmp_path, keep=1)
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {
        "step_10000000",
        "step_best",
        "step_0000006 copy",
    }


def test_prune_keeps_valid_checkpoints_past_damaged_ones(trained, tmp_path):
    run_dir = _copy(trained, tmp_path)
    _damage(run_dir / "checkpoints" / "step_0000003" / "state.json", "flip")
    prune_checkpoints(run_dir, keep=2)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000002", "step_0000004"]


def test_metrics_rewrite_is_atomic(trained, slide, tmp_path, monkeypatch):
    run_dir = _copy(trained, tmp_path)
    for path in list_checkpoints(run_dir)[1:]:
        shutil.rmtree(path)  # newest valid: step 2; metrics hold steps 1..4
    metrics = run_dir / METRICS
    before, inode = metrics.read_text(), metrics.stat().st_ino

    def crash(fd):
        raise OSError("injected crash before the rename")

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(OSError, match="injected"):
        start_run(_config(slide, run_dir, 4), resume=True)
    assert metrics.read_text() == before  # the old lines survive a crash mid-rewrite
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()
    start_run(_config(slide, run_dir, 4), resume=True)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]
    assert metrics.stat().st_ino != inode  # a new file renamed over the old one


@pytest.mark.parametrize("resume", [False, True])
def test_folder_without_checkpoint_starts_afresh(slide, tmp_path, caplog, resume):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(_config(slide, run_dir, 3).to_dict()))
    (run_dir / METRICS).write_text('{"step": 1}\n')  # a run killed before its first checkpoint
    with caplog.at_level(logging.WARNING):
        run = start_run(_config(slide, run_dir, 3), resume=resume)
    assert run.step == 0 and "holds no checkpoint" in caplog.text and "afresh" in caplog.text
    assert not (run_dir / METRICS).read_text()
    train(run)
    assert load_checkpoint(run_dir).step == 3


def test_every_checkpoint_damaged_refuses_naming_the_fix(trained, slide, tmp_path):
    run_dir = _copy(trained, tmp_path)
    for path in list_checkpoints(run_dir):
        _damage(path / "optimizer.safetensors", "flip")
    with pytest.raises(CheckpointError, match=r"no valid checkpoint.*delete .*checkpoints"):
        start_run(_config(slide, run_dir, 5), resume=True)


def test_resume_with_new_lr_uses_it(trained, slide, tmp_path):
    """Adam (no bias correction) moves each weight by lr * m / (sqrt(v) + eps): from the same
    checkpoint, --lr 0.05 must move the weights 5 times as far as the saved 0.01."""
    moves = {}
    for lr in (0.01, 0.05):
        run_dir = _copy(trained, tmp_path / str(lr))
        for path in list_checkpoints(run_dir)[1:]:
            shutil.rmtree(path)
        start = load_checkpoint(run_dir).weights
        overrides = {"steps": 3} | ({"lr": lr} if lr != 0.01 else {})
        run = start_run(TrainConfig(out=str(run_dir)), resume=True, overrides=overrides)
        train(run)
        saved = load_checkpoint(run_dir)
        assert saved.optimizer["learning_rate"].item() == np.float32(lr)
        moves[lr] = saved.weights["down1.weight"] - start["down1.weight"]
    np.testing.assert_allclose(moves[0.05], 5 * moves[0.01], rtol=1e-3, atol=1e-9)


def test_relative_slide_path_resumes_from_another_directory(slide, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    run_dir = tmp_path / "run"
    train(start_run(_config(os.path.relpath(slide), run_dir, 1), resume=False))
    assert json.loads((run_dir / "config.json").read_text())["data"] == [slide]
    monkeypatch.chdir(tmp_path / "b")
    run = start_run(TrainConfig(out=str(run_dir)), resume=True, overrides={"steps": 2})
    train(run)
    assert load_checkpoint(run_dir).step == 2


def test_resume_keeps_the_saved_backend_and_device(slide, tmp_path):
    out = tmp_path / "run"
    train(start_run(_config(slide, out, 1, backend="cuda-um", device="cpu"), resume=False))
    requested = TrainConfig(out=str(out))  # what `train --resume --out run` asks for
    assert resolve_config(requested, True, {"steps": 2})[0].backend == "cuda-um"  # the world
    run = start_run(requested, resume=True, overrides={"steps": 2})
    assert (run.backend.name, str(run.backend.device)) == ("cuda-um", "cpu") and run.step == 1
    typed = start_run(requested, resume=True, overrides={"steps": 2, "backend": "mlx"})
    assert typed.backend.name == "mlx"


@pytest.mark.parametrize("seed", [0, 5])
def test_same_seed_same_initial_weights_on_every_backend(seed):
    mlx, torch_cpu = get_backend("mlx"), get_backend("cuda-um", device="cpu")
    a = mlx.flat_params(mlx.build_model(seed))
    b = torch_cpu.flat_params(torch_cpu.build_model(seed))
    other = mlx.flat_params(mlx.build_model(seed + 1))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.array_equal(a["down1.weight"], other["down1.weight"])


def test_same_seed_same_run_start_on_every_backend(slide, tmp_path):
    starts = [
        start_run(replace(_config(slide, tmp_path / name, 1), backend=name, device="cpu"), False)
        for name in ("mlx", "cuda-um")
    ]
    a, b = (run.backend.flat_params(run.model) for run in starts)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _as_format_1(run_dir, drop=("normalize", "illumination")):
    """A run folder as gigamlx wrote it before formats: no "format" keys, no manifests, and
    (older still) none of the options in `drop`."""

    def old(config: dict) -> dict:
        return {k: v for k, v in config.items() if k not in ("format", *drop)}

    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(old(config)))
    for path in list_checkpoints(run_dir):
        state = json.loads((path / "state.json").read_text())
        state = {k: v for k, v in state.items() if k != "format"} | {"config": old(state["config"])}
        (path / "state.json").write_text(json.dumps(state))
        (path / MANIFEST).unlink()


def test_a_run_written_before_formats_resumes(slide, tmp_path):
    out = tmp_path / "run"
    config = _config(slide, out, 2, normalize=False, illumination=0.0)  # what old runs did
    train(start_run(config, resume=False))
    _as_format_1(out)
    run = start_run(_config(slide, out, 3), resume=True, overrides={"steps": 3})
    assert run.step == 2 and (run.config.normalize, run.config.illumination) == (False, 0.0)
    train(run)
    saved = json.loads((out / "config.json").read_text())
    assert saved["format"] == CONFIG_FORMAT and saved["normalize"] is False and saved["steps"] == 3
    assert load_checkpoint(out).step == 3


def test_a_saved_config_with_unknown_keys_is_refused_by_name(trained, slide, tmp_path):
    run_dir = _copy(trained, tmp_path)
    path = list_checkpoints(run_dir)[-1]
    state = json.loads((path / "state.json").read_text())
    state["config"] |= {"foo": 1}
    (path / "state.json").write_text(json.dumps(state))
    (path / MANIFEST).unlink()
    result = runner.invoke(app, ["train", "--resume", "--out", str(run_dir), "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"{path / 'state.json'}: unknown keys foo (written by a newer gigamlx?" in " ".join(
        result.output.split()
    )
