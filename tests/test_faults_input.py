"""Inputs a hostile but fair user types: out-of-range seeds and budgets, outputs that are files
or links to nowhere, unwritable folders, broken GeoJSON, odd OME stores, 0/1 predictions,
unfinished stores, a full stdout. Each is one line on stderr and a non-zero exit."""

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from test_faults_io import SMALL, _one_line_error
from typer.testing import CliRunner

from gigamlx.cli import app
from gigamlx.slide import ngff

runner = CliRunner()


@pytest.fixture(scope="module")
def slide(synth_store):
    return synth_store((400, 600), seed=2)


def _train(slide, tmp_path, *extra):
    args = ["train", str(slide), *SMALL, "--steps", "1", "--out", str(tmp_path / "r")]
    return runner.invoke(app, [*args, *extra])


@pytest.mark.parametrize("seed", ["-1", str(2**64), "99999999999999999999"])
def test_seed_out_of_range(slide, tmp_path, seed):
    _one_line_error(_train(slide, tmp_path, "--seed", seed), 2, "--seed", seed)
    args = ["synth", str(tmp_path / "x.zarr"), "--size", "64x64", "--seed", seed]
    result = runner.invoke(app, args)
    _one_line_error(result, 2, "--seed")


@pytest.mark.parametrize("budget", ["inf", "nan", "1e400", "-inf"])
def test_memory_budget_not_finite(slide, weights, tmp_path, budget):
    _one_line_error(_train(slide, tmp_path, "--memory-budget", budget), 2, budget)
    args = ["predict", str(weights), str(slide), "--out", str(tmp_path / "p")]
    _one_line_error(runner.invoke(app, [*args, "--memory-budget", budget]), 2, budget)


def _out_cases(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "run")
    return {
        "a_file": tmp_path / "a_file",
        "devnull": Path("/dev/null"),
        "dangling": tmp_path / "dangling",
        "under_a_file": tmp_path / "a_file" / "run",
    }


@pytest.mark.parametrize("case", ["a_file", "devnull", "dangling", "under_a_file"])
def test_out_that_cannot_be_a_folder(slide, weights, tmp_path, case):
    out = _out_cases(tmp_path)[case]
    args = ["train", str(slide), *SMALL, "--steps", "1", "--out", str(out)]
    _one_line_error(runner.invoke(app, args), 2, str(out))
    args = ["predict", str(weights), str(slide), "--out", str(out)]
    _one_line_error(runner.invoke(app, args), 2, str(out))


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_unwritable_checkpoints_fail_at_the_start(slide, tmp_path, monkeypatch, code):
    assert _train(slide, tmp_path).exit_code == 0
    real = Path.write_bytes

    def refuse_in_checkpoints(self, data):  # root ignores chmod: refuse like the kernel would
        if self.parent.name == "checkpoints":
            raise OSError(code, "refused", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", refuse_in_checkpoints)
    args = ["train", "--resume", "--steps", "2", "--out", str(tmp_path / "r"), "--quiet"]
    line = _one_line_error(runner.invoke(app, args), 2, str(tmp_path / "r" / "checkpoints"))
    assert ("permission denied" if code == errno.EACCES else "read-only") in line


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"type": "Polygon"}', ["without a list of coordinates"]),
        ('{"type": "Polygon", "coordinates": 5}', ["coordinates"]),
        ('{"type": "Polygon", "coordinates": [[1, 2]]}', ["not a list of [x, y] points"]),
        ('{"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [5]}}', []),
        ('{"type":', ["not valid JSON at line 1"]),
    ],
)
def test_geojson_errors_name_the_file(tmp_path, text, words):
    source = tmp_path / "s.tif"
    tifffile.imwrite(source, np.full((128, 128, 3), 200, np.uint8))
    geojson = tmp_path / "a.geojson"
    geojson.write_text(text)
    args = ["ingest", str(source), str(tmp_path / "o.zarr"), "--geojson", str(geojson)]
    _one_line_error(runner.invoke(app, args), 2, str(geojson), *words)
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("chunk", ["0", "-5", "3"])
def test_chunk_too_small(tmp_path, chunk):
    source = tmp_path / "s.tif"
    tifffile.imwrite(source, np.full((64, 64, 3), 200, np.uint8))
    for args in (["synth", str(tmp_path / "x.zarr")], ["ingest", str(source), str(tmp_path / "o")]):
        _one_line_error(runner.invoke(app, [*args, "--chunk", chunk]), 2, "--chunk", chunk)


def test_otsu_on_a_greyscale_slide(tmp_path):
    source = tmp_path / "grey.tif"
    tifffile.imwrite(source, np.random.default_rng(0).integers(0, 255, (128, 128), np.uint8))
    args = ["ingest", str(source), str(tmp_path / "o.zarr"), "--otsu"]
    _one_line_error(runner.invoke(app, args), 2, str(source), "greyscale", "--mask")
    assert list(tmp_path.iterdir()) == [source]


def _ome_store(path: Path, image: np.ndarray, axes: str | None, mask_hw) -> Path:
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("0", data=image, chunks=image.shape)
    multiscales = [{"datasets": [{"path": "0"}]}]
    if axes is not None:
        multiscales = ngff._multiscales("image", axes, 1, None)
    group.update_attributes({"ome": {"version": "0.5", "multiscales": multiscales}})
    labels = group.create_group("labels")
    labels.update_attributes(ngff.labels_attrs(["tissue"]))
    tissue = labels.create_group("tissue")
    tissue.create_array("0", data=np.ones(mask_hw, np.uint8), chunks=mask_hw)
    tissue.update_attributes(ngff.label_attrs("tissue", 1, None))
    return path


@pytest.mark.parametrize(
    ("image_shape", "axes", "mask_hw", "words"),
    [
        ((3, 400, 600), "cyx", (300, 500), ["tissue mask is 300x500", "400x600"]),
        ((400, 600), None, (400, 600), ["unreadable OME-Zarr multiscale metadata"]),
        ((400, 600), "cyx", (400, 600), ["axes 'cyx'", "2-D"]),
    ],
)
def test_ome_store_checked_at_open(tmp_path, image_shape, axes, mask_hw, words):
    image = np.full(image_shape, 128, np.uint8)
    store = _ome_store(tmp_path / "ome.zarr", image, axes, mask_hw)
    args = ["train", str(store), *SMALL, "--steps", "1", "--out", str(tmp_path / "r")]
    _one_line_error(runner.invoke(app, args), 2, str(store), *words)


def test_eval_reads_a_0_1_map_as_0_1_and_says_so(slide, tmp_path):
    mask = np.asarray(zarr.open(slide / "labels" / "tissue" / "0", mode="r"))
    pred = tmp_path / "p01.png"
    Image.fromarray(mask).save(pred)
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", str(pred), "--masks", str(slide), "--json", str(report)])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "read as a 0/1 map" in notes[0] and str(pred) in notes[0]
    row = json.loads(report.read_text())["slides"][0]
    assert row["metrics"]["dice"] == 1.0 and row["pred_scale"] == 1
    args = ["eval", str(pred), "--masks", str(slide), "--json", str(report), "--pred-scale", "255"]
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads(report.read_text())["slides"][0]["metrics"]["dice"] == 0.0
    Image.fromarray(mask * 255).save(pred)  # a 0/255 map reads the usual way, silently
    result = runner.invoke(app, ["eval", str(pred), "--masks", str(slide), "--json", str(report)])
    assert "note:" not in result.output
    assert json.loads(report.read_text())["slides"][0]["metrics"]["dice"] == 1.0


def test_eval_refuses_an_unfinished_store(slide, weights, tmp_path):
    out = tmp_path / "out"
    predict = ["predict", str(weights), str(slide), "--out", str(out)]
    assert runner.invoke(app, predict).exit_code == 0
    partial = out / ".s.zarr.partial-123-abcdef"
    (out / "s.zarr").rename(partial)
    result = runner.invoke(app, ["eval", str(partial), "--masks", str(slide)])
    _one_line_error(result, 2, str(partial), "unfinished")
    meta = json.loads((partial / "zarr.json").read_text())
    meta["attributes"]["gigamlx"]["complete"] = False
    (out / "t.zarr").mkdir()
    (out / "t.zarr" / "zarr.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["eval", str(out / "t.zarr"), "--masks", str(slide)])
    _one_line_error(result, 2, "t.zarr", "unfinished")


def test_eval_pred_scale_must_be_known(slide):
    result = runner.invoke(app, ["eval", str(slide), "--masks", str(slide), "--pred-scale", "7"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "Invalid value for '--pred-scale'" in result.output  # typer's own: a Literal choice


def _info(stdout) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "gigamlx.cli", "info"]
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_info_to_a_full_stdout():
    with open("/dev/full", "w") as full:
        result = _info(full)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and "standard output" in lines[0] and "disk is full" in lines[0]


def test_info_to_a_closed_pipe_is_quiet():
    command = [sys.executable, "-m", "gigamlx.cli", "info"]
    info = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    info.stdout.close()  # the reader quit before the first line, as `| head -0` does
    assert info.wait(timeout=120) == 141
    assert info.stderr.read() == b""
