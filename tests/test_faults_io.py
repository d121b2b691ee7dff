"""Faults on the way out: a full disk (ENOSPC injected in-process) during checkpoint, synth,
ingest and predict; leftovers of killed runs; --overwrite that must not delete what gigamlx
did not write, nor an input. Each ends in one line, a non-zero exit and nothing partial."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr.storage
from typer.testing import CliRunner

from gigamlx.cli import app
from gigamlx.runs import checkpoint
from gigamlx.runs.checkpoint import list_checkpoints, load_checkpoint

runner = CliRunner()
SMALL = ["--region", "256x320", "--memory-budget", "300MB", "--tile", "128", "--quiet"]
SMALL += ["--val-fraction", "0"]  # no validation (and no best checkpoint): faults only
DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def slide(synth_store):
    return synth_store((400, 600), seed=2)


def _one_line_error(result, code: int, *words: str) -> str:
    """The run failed with `code` and exactly one `error:` line holding every word."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _disk_full_after(monkeypatch, chunk_writes: int) -> None:
    """zarr's local store writes `chunk_writes` chunks, then the disk is full (the chunk that
    fails is written first, as a half-written file would be)."""
    real_set = zarr.storage.LocalStore.set
    count = {"chunks": 0}

    async def set_until_full(self, key, value):
        await real_set(self, key, value)
        if "/c/" in key:
            count["chunks"] += 1
            if count["chunks"] > chunk_writes:
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_until_full)


@pytest.mark.parametrize("how", ["oserror", "safetensors"])
def test_disk_full_during_checkpoint_keeps_the_previous_one(slide, tmp_path, monkeypatch, how):
    out = tmp_path / "run"
    real_save = checkpoint.save_file

    def save_until_full(tensors, filename):
        if "step_0000001" in str(filename):  # checkpoint 1 is written whole, whatever its files
            return real_save(tensors, filename)
        open(filename, "wb").write(b"half")  # a partial file, as a full disk leaves it
        if how == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        raise RuntimeError("Error while serializing: I/O error: No space left (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", save_until_full)
    args = ["train", str(slide), *SMALL, "--steps", "3", "--checkpoint-every", "1"]
    result = runner.invoke(app, args + ["--out", str(out)])
    line = _one_line_error(result, 1, "disk is full", "step 2 was not saved", "step_0000001")
    assert "--resume" in line
    assert [p.name for p in list_checkpoints(out)] == ["step_0000001"]
    assert _hidden(out / "checkpoints") == []  # no .tmp_step_* keeping the disk full
    assert load_checkpoint(out).step == 1


def test_disk_full_during_synth_leaves_nothing(tmp_path, monkeypatch):
    _disk_full_after(monkeypatch, 3)
    out = tmp_path / "x.zarr"
    result = runner.invoke(app, ["synth", str(out), "--size", "300x300", "--chunk", "64"])
    _one_line_error(result, 1, str(out), "disk is full")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_ingest_leaves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "in" / "a.tif"
    source.parent.mkdir()
    tifffile.imwrite(source, np.full((300, 300, 3), 200, np.uint8))
    _disk_full_after(monkeypatch, 2)
    out = tmp_path / "out" / "a.zarr"
    result = runner.invoke(app, ["ingest", str(source), str(out), "--otsu", "--chunk", "64"])
    _one_line_error(result, 1, str(out), "disk is full")
    assert list(out.parent.iterdir()) == []


def test_disk_full_during_predict_leaves_nothing(slide, weights, tmp_path, monkeypatch):
    _disk_full_after(monkeypatch, 1)
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(weights), str(slide), "--out", str(out)])
    _one_line_error(result, 1, str(out / "s.zarr"), "disk is full")
    assert not out.exists() or list(out.iterdir()) == []  # the folder it made goes too


def test_disk_full_writing_the_overlay_keeps_the_rest(slide, weights, tmp_path, monkeypatch):
    from PIL import Image

    def full(self, fp, *args, **kwargs):
        open(fp, "wb").write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "pred"
    args = ["predict", str(weights), str(slide), "--out", str(out), "--overlay"]
    _one_line_error(runner.invoke(app, args), 1, "s_overlay.png", "disk is full")
    assert sorted(p.name for p in out.iterdir()) == ["s.zarr"]  # complete, and nothing else


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_killed_runs_are_removed_at_the_next_start(slide, tmp_path):
    dead = _dead_pid()
    out = tmp_path / "x.zarr"
    for name in (f".x.zarr.partial-{dead}-abc123", f".x.zarr.partial-{os.getpid()}-def456"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "chunk").write_bytes(b"0" * 100)
    result = runner.invoke(app, ["synth", str(out), "--size", "64x64", "--chunk", "64"])
    assert result.exit_code == 0, result.output
    # the dead process's leftover is gone; a live process's write is left alone
    assert _hidden(tmp_path) == [f".x.zarr.partial-{os.getpid()}-def456"]
    run = tmp_path / "run"
    args = ["train", str(slide), *SMALL, "--steps", "1", "--out", str(run)]
    assert runner.invoke(app, args).exit_code == 0
    (run / "checkpoints" / f".tmp_step_0000002_{dead}").mkdir()
    resume = ["train", "--resume", "--steps", "2", "--out", str(run), "--quiet"]
    assert runner.invoke(app, resume).exit_code == 0
    assert _hidden(run / "checkpoints") == []


def test_overwrite_refuses_a_folder_gigamlx_did_not_write(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["synth", str(junk), "--size", "64x64", "--overwrite"])
    _one_line_error(result, 2, str(junk), "not a slide store written by gigamlx")
    assert (junk / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_store_gigamlx_wrote(tmp_path):
    out = str(tmp_path / "x.zarr")
    assert runner.invoke(app, ["synth", out, "--size", "64x64"]).exit_code == 0
    result = runner.invoke(app, ["synth", out, "--size", "64x64"])
    line = _one_line_error(result, 2, "--overwrite")
    assert "overwrite=True" not in line
    assert runner.invoke(app, ["synth", out, "--size", "64x64", "--overwrite"]).exit_code == 0


def test_ingest_refuses_to_replace_its_input(tmp_path):
    source = tmp_path / "a.tif"
    tifffile.imwrite(source, np.full((64, 64, 3), 200, np.uint8))
    link = tmp_path / "link.zarr"
    link.symlink_to(source)
    for out in (source, link):
        result = runner.invoke(app, ["ingest", str(source), str(out), "--overwrite"])
        _one_line_error(result, 2, "would replace the input")
    assert tifffile.imread(source).shape == (64, 64, 3)


def test_predict_overwrite_refuses_a_training_run(slide, weights, tmp_path):
    run = tmp_path / "out" / "s.zarr"  # a run folder that happens to have the output's name
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    args = ["predict", str(weights), str(slide), "--out", str(tmp_path / "out"), "--overwrite"]
    _one_line_error(runner.invoke(app, args), 2, "not a prediction written by gigamlx")
    assert (run / "metrics.jsonl").exists()


def test_predict_refuses_output_onto_its_input_through_a_link(slide, weights, tmp_path):
    link = tmp_path / "same"
    link.symlink_to(slide.parent)
    args = ["predict", str(weights), str(slide), "--out", str(link), "--overwrite"]
    _one_line_error(runner.invoke(app, args), 2, "would replace the input")
