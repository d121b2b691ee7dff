"""BLAS preloading: it must run before `import mlx.core`, so each case runs in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from gigamlx.backends.mlx import blas

PRELOAD_AND_REPORT = """
import json, time
from gigamlx.backends.mlx.blas import preload_blas, blas_info
info = preload_blas()
import mlx.core as mx
a = mx.random.normal((768, 768))
mx.eval(a @ a)
seconds = []
for _ in range(3):
    start = time.perf_counter()
    mx.eval(a @ a)
    seconds.append(time.perf_counter() - start)
print(json.dumps({"info": info._asdict(), "again": blas_info()._asdict(), "s": min(seconds)}))
"""


def run_preload(env_value: str | None, code: str = PRELOAD_AND_REPORT) -> dict:
    """Run `code` in a fresh interpreter with GIGAMLX_BLAS set (or unset); parse its JSON."""
    env = {k: v for k, v in os.environ.items() if k != blas.ENV_VAR}
    if env_value is not None:
        env[blas.ENV_VAR] = env_value
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def installed_openblas() -> str | None:
    return next((p for p in blas.candidate_paths() if os.path.exists(p)), None)


@pytest.mark.skipif(sys.platform != "linux", reason="the preload only acts on Linux")
def test_blas_preload_disabled_by_env():
    result = run_preload("none")
    assert result["info"]["name"] == "bundled"
    assert "disabled" in result["info"]["reason"]


@pytest.mark.skipif(sys.platform != "linux", reason="the preload only acts on Linux")
def test_blas_preload_bad_path_falls_back():
    result = run_preload("/nonexistent/libopenblas.so.0")
    assert result["info"]["path"] is None
    assert "cannot load" in result["info"]["reason"]


def test_blas_preload_after_mlx_import_is_refused():
    code = "import mlx.core\n" + PRELOAD_AND_REPORT
    result = run_preload(None, code)
    assert result["info"]["path"] is None
    expected = "accelerate" if sys.platform == "darwin" else "imported before"
    assert expected in result["info"]["name"] + result["info"]["reason"]


def test_blas_preload_is_noop_on_macos(monkeypatch):
    monkeypatch.setattr(blas.sys, "platform", "darwin")
    assert blas._preload().name == "accelerate"


def test_blas_info_before_preload(monkeypatch):
    monkeypatch.setattr(blas, "_state", {})
    assert "not called" in blas.blas_info().reason


@pytest.mark.skipif(
    sys.platform != "linux" or installed_openblas() is None,
    reason="no OpenBLAS installed (Debian/Ubuntu: apt install libopenblas0-pthread)",
)
def test_blas_preload_openblas_speeds_up_matmul():
    """The preloaded OpenBLAS must be what MLX's matmul runs: far faster than the bundled one."""
    fast = run_preload(None)
    assert fast["info"]["name"] == "openblas"
    assert fast["again"] == fast["info"]
    bundled = run_preload("none")
    # Bundled reference BLAS ~5 GFLOP/s vs OpenBLAS ~100+; 3x leaves room for a loaded machine.
    assert bundled["s"] > 3 * fast["s"], (bundled["s"], fast["s"])


THREADS = """
import json
from gigamlx.backends.mlx import blas
from gigamlx.backends.mlx.backend import MLXBackend
MLXBackend("mlx")
lib = next((h for h in blas._handles if hasattr(h, "openblas_get_num_threads")), None)
print(json.dumps({"threads": lib.openblas_get_num_threads() if lib else None}))
"""


@pytest.mark.skipif(installed_openblas() is None, reason="no system OpenBLAS to preload")
def test_openblas_runs_on_one_thread_in_every_process():
    """The same thread count everywhere keeps matmuls bit-identical between processes (a run
    and its resume); a user's OPENBLAS_NUM_THREADS wins."""
    os.environ.pop("OPENBLAS_NUM_THREADS", None)
    assert run_preload(None, THREADS)["threads"] == 1
    os.environ["OPENBLAS_NUM_THREADS"] = "2"
    try:
        assert run_preload(None, THREADS)["threads"] == 2
    finally:
        del os.environ["OPENBLAS_NUM_THREADS"]


def test_blas_looks_in_the_environment_first():
    """setup.sh unpacks OpenBLAS into the venv where apt needs root: it is tried first."""
    assert blas.candidate_paths()[0] == os.path.join(
        sys.prefix, blas.VENV_BLAS_DIR, "libopenblas.so.0"
    )


def test_blas_loads_the_runtime_beside_it_first(tmp_path, monkeypatch):
    """The Fortran runtime unpacked beside OpenBLAS is loaded first, so the dynamic linker
    resolves OpenBLAS's dependency to it (nothing else searches that folder)."""
    for name in ("libgfortran.so.5", "libquadmath.so.0", "libopenblas.so.0"):
        (tmp_path / name).touch()
    loaded = []

    class Library:
        def __init__(self, path, mode):
            loaded.append(os.path.basename(path))
            self.cblas_sgemm = None

    monkeypatch.setattr(blas.ctypes, "CDLL", Library)
    monkeypatch.setattr(blas, "_handles", [])
    assert blas._load_global(str(tmp_path / "libopenblas.so.0")) is None
    assert loaded == ["libquadmath.so.0", "libgfortran.so.5", "libopenblas.so.0"]


@pytest.mark.skipif(
    sys.platform != "linux" or installed_openblas() is None, reason="no OpenBLAS to copy"
)
def test_blas_preloads_the_copy_in_a_venv(tmp_path):
    """A venv holding OpenBLAS under VENV_BLAS_DIR (as setup.sh leaves it without root) makes
    MLX use that copy."""
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = venv / blas.VENV_BLAS_DIR
    target.mkdir(parents=True)
    shutil.copy(installed_openblas(), target / "libopenblas.so.0")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]
    env = {k: v for k, v in os.environ.items() if k != blas.ENV_VAR}
    env["PYTHONPATH"] = os.pathsep.join([repo, *site])
    code = "from gigamlx.backends.mlx.blas import preload_blas; print(preload_blas().path)"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target / "libopenblas.so.0")
