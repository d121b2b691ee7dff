"""scripts/bench.py: its lazy random region, and one tiny end-to-end run in a subprocess."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "bench.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_region_windows_match_whole_read():
    bench = _bench_module()
    image, mask = bench.RandomRegion((700, 1300), 3), bench.RandomRegion((700, 1300), 0)
    whole = image[:, :]
    assert whole.shape == (700, 1300, 3) and whole.dtype == np.uint8
    np.testing.assert_array_equal(image[100:650, 500:1290], whole[100:650, 500:1290])
    assert set(np.unique(mask[:, :])) == {0, 1}
    assert whole.std() > 50  # random bytes, not a constant


def test_bench_script_small_run(tmp_path):
    bench = _bench_module()
    pytest.importorskip("torch", reason="the PyTorch peer is an optional benchmark dependency")
    out, markdown = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    cmd = [sys.executable, str(SCRIPT), "--sizes", "256", "--big", "256x512", "--steps", "1"]
    cmd += ["--json", str(out), "--markdown", str(markdown)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "profile of one 256x512 gigamlx step" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kind"], r["hw"]) for r in rows] == [
        ("torch", [256, 256]),
        ("gigamlx", [256, 256]),
        ("gigamlx-mlx", [256, 256]),
        ("mlx-whole", [256, 256]),
        ("gigamlx", [256, 512]),
    ]
    losses = [r["loss"] for r in rows[:4]]  # same weights, data and loss: same value
    np.testing.assert_allclose(losses, losses[0], rtol=1e-4)
    assert rows[1]["speedup_vs_torch"] > 0 and rows[1]["rss_ratio_vs_torch"] > 0
    assert rows[4]["profile"]["total"] > 0
    # two forwards + one backward of the tiled step vs one of each for the whole image (and a
    # one-tile step, which makes one pass)
    tiled, whole = (
        bench.flop_per_step("gigamlx", 256 * 256, 2),
        bench.flop_per_step("torch", 256 * 256),
    )
    assert tiled > whole == bench.flop_per_step("gigamlx", 256 * 256, 1) > 0
    for row in rows:
        flop = bench.flop_per_step(row["kind"], row["pixels"], row.get("tiles", 1))
        assert row["gflops"] == pytest.approx(flop / row["seconds"] / 1e9)
        assert row["per_step"]["user_s"] >= 0 and row["per_step"]["minor_faults"] >= 0
    # a 256² step can take less CPU than the kernel's accounting tick (0.0 s): the rows
    # together cannot
    assert sum(row["per_step"]["user_s"] for row in rows) > 0
    assert "GFLOP/s" in done.stdout and "% sgemm" in done.stdout
    section = markdown.read_text()  # its section of docs/benchmarks.md, from the same rows
    assert section.startswith("<!-- bench:bench.py begin -->")
    assert f"| {rows[1]['seconds']:.2f} |" in section and "numpy sgemm: " in section
    # the command as run, after the GIGAMLX_/OPENBLAS_ variables set for it (CI sets some)
    assert re.search(
        r"command: `([A-Z_]+=\S* )*python3 scripts/bench.py --sizes 256 --big 256x512", section
    )


def test_read_benchmark_runs_and_writes_its_rows(tmp_path):
    """scripts/bench_read.py on a small synthetic store: one row per turn it can time."""
    from gigamlx.backends import get_backend
    from gigamlx.synth.slide import synth_slide

    store = synth_slide(tmp_path / "s.zarr", (320, 640), seed=1)
    out = tmp_path / "read.json"
    script = SCRIPT.with_name("bench_read.py")
    cmd = [sys.executable, str(script), str(store), "--region", "256x512", "--tile", "128"]
    cmd += ["--repeats", "1", "--json", str(out), "--markdown", str(tmp_path / "b.md")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    native = [("native", "zarr"), ("native", "direct")]
    expected = [("numpy", "direct")] + (native if get_backend("mlx").window_turner else [])
    assert [(r["kind"], r["decode"]) for r in rows] == expected
    assert all(r["wall_s"] > 0 and r["pixels"] >= 256 * 512 for r in rows)
    assert "one pass of window reads" in done.stdout
    section = (tmp_path / "b.md").read_text()
    assert section.count("<!-- bench:bench_read.py") == 2 and "| numpy | direct |" in section


def test_step_floor_adds_its_measured_parts(tmp_path):
    """scripts/step_floor.py on a small synthetic store: the windows' multiply-adds from the
    layer table, each floor the kernels plus that turn's reads over the cores, and the share of
    sgemm the kernels would need to meet the target in what the reads leave."""
    from gigamlx.backends.mlx import fused
    from gigamlx.core.spec import macs_per_px
    from gigamlx.synth.slide import synth_slide

    module, why = fused._load()
    if module is None or not hasattr(module, "middle"):
        pytest.skip(f"needs the fused extension 0.8 ({why}): bash setup.sh builds it")
    store = synth_slide(tmp_path / "s.zarr", (320, 640), seed=1)
    out = tmp_path / "floor.json"
    cmd = [sys.executable, str(SCRIPT.with_name("step_floor.py")), "--slide", str(store)]
    cmd += ["--region", "256x512", "--budget", "200MB", "--repeat", "1", "--target-s", "0.5"]
    cmd += ["--json", str(out), "--markdown", str(tmp_path / "b.md")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    r = json.loads(out.read_text())
    forward, backward = macs_per_px()
    assert r["windows_px"] >= 256 * 512  # the windows cover the region, halos added
    assert r["flop"] == pytest.approx(2 * r["windows_px"] * (2 * forward + backward))
    reads = r["reads_per_step_cpu_s"]["straight"] / r["cores"]
    at_sgemm = r["flop"] / r["sgemm_gflops"] / 1e9
    assert reads > 0 and r["kernels_s"] > 0
    left = 0.5 - reads
    needed = r["kernel_share_of_sgemm_needed"]["straight"]
    assert needed is None if left <= 0 else needed == pytest.approx(at_sgemm / left)
    assert r["floors_s"]["floor at sgemm, straight"] == pytest.approx(at_sgemm + reads)
    assert r["floors_s"]["floor as built, straight"] == pytest.approx(r["kernels_s"] + reads)
    assert "floor as built, quarter-turned" in done.stdout
    assert (tmp_path / "b.md").read_text().count("<!-- bench:step_floor.py") == 2


def test_synth_benchmark_times_current_beside_baseline(tmp_path):
    """scripts/bench_synth.py: a grid of small chunks, HEAD's renderer beside the checkout's."""
    if not (SCRIPT.parent.parent / ".git").exists():
        pytest.skip("needs a git checkout for --baseline")
    out = tmp_path / "synth.json"
    cmd = [sys.executable, str(SCRIPT.with_name("bench_synth.py")), "--size", "512x1024"]
    cmd += ["--chunk-px", "256", "--grid", "2x3", "--repeats", "1", "--baseline", "HEAD"]
    cmd += ["--json", str(out), "--markdown", str(tmp_path / "b.md")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["origins_yx"] == [[0, 0], [0, 512], [0, 768], [256, 0], [256, 512], [256, 768]]
    assert [r["renderer"] for r in report["rows"]] == ["current", "baseline HEAD"]
    assert all(r["cpu_s_per_chunk"] > 0 and r["chunks"] == 6 for r in report["rows"])
    assert report["rows"][1]["speedup"] == 1.0 and "chunks of 256 px" in done.stdout
    section = (tmp_path / "b.md").read_text()
    assert section.count("<!-- bench:bench_synth.py") == 2


def test_validation_benchmark_times_each_step_and_writes_its_rows(tmp_path):
    """scripts/bench_validation.py: the counts on both map kinds, the closing both ways (the
    script checks they agree) and a mask per hole limit."""
    out = tmp_path / "val.json"
    cmd = [sys.executable, str(SCRIPT.with_name("bench_validation.py")), "--size", "300x500"]
    cmd += ["--repeats", "1", "--json", str(out), "--markdown", str(tmp_path / "b.md")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["map"] for r in rows] == ["uint8", "float32", "bool", "bool", "bool", "bool"]
    assert [r["step"].split(",")[-1] for r in rows[2:4]] == [
        " distance transforms",
        " rows of bits",
    ]
    assert all(r["seconds"] > 0 for r in rows)
    assert (tmp_path / "b.md").read_text().count("<!-- bench:bench_validation.py") == 2


BENCH_SCRIPTS = ("bench.py", "bench_memory.py", "bench_ops.py", "bench_read.py",
                 "bench_geojson.py", "bench_synth.py", "bench_validation.py",
                 "reproduce_paper.py", "exactness_table.py", "step_floor.py")  # fmt: skip


@pytest.mark.parametrize("name", BENCH_SCRIPTS)
def test_bench_script_help_lists_markdown(name):
    """Every benchmark script can write its own section of docs/benchmarks.md."""
    cmd = [sys.executable, str(SCRIPT.with_name(name)), "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"COLUMNS": "200", "TERM": "dumb"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--markdown" in done.stdout


def test_kernel_benchmark_compares_two_builds_bit_for_bit(tmp_path):
    """scripts/bench_kernels.py on a small window, the installed build against itself loaded
    from its file: the kernels and the middle both ways timed, every output the same bits."""
    from gigamlx.backends.mlx import fused

    module, why = fused._load()
    if module is None:
        pytest.skip(f"the fused extension is not installed ({why}): bash setup.sh builds it")
    out = tmp_path / "kernels.json"
    cmd = [sys.executable, str(SCRIPT.with_name("bench_kernels.py")), "--window", "128x192"]
    cmd += ["--repeat", "1", "--rounds", "1", "--against", module.__file__, "--json", str(out)]
    cmd += ["--markdown", str(tmp_path / "b.md")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["window_hw"] == [128, 192] and len(report["builds"]) == 2
    kernels = [k["kernel"] for k in report["kernels"]]
    assert kernels == [
        "down1 forward",
        "down1 forward+grad",
        "head forward",
        "head forward+grad",
        "head+loss forward",
        "head+loss gradients",
        *(
            f"middle {what} ({path})"
            for path in ("pure-MLX ops", "fused")
            for what in ("forward", "forward+grad")
        ),
    ]
    assert all(k["same_bits"] and k["gflops"] > 0 for k in report["kernels"])
    section = (tmp_path / "b.md").read_text()
    assert section.count("<!-- bench:bench_kernels.py") == 2 and "| down1 forward |" in section
