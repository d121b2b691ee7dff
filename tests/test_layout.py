"""The package layout: imports point down (scripts/import_graph.py), engines stay in backends/,
and no top-level `kernels` Python package is installed."""

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import import_graph  # scripts/import_graph.py, through pytest's pythonpath (pyproject.toml)
import pytest

REPO = Path(__file__).resolve().parents[1]


def _package(root: Path, files: dict[str, str]) -> Path:
    """A fake gigamlx package under `root` with the given module sources."""
    for name, source in files.items():
        path = root / "gigamlx" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        for parent in path.relative_to(root).parents:
            if parent != Path("."):
                (root / parent / "__init__.py").touch()
    return root / "gigamlx"


def test_gigamlx_imports_point_down(capsys):
    assert import_graph.main([]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "core -> (nothing)" in out and "ok: no cycle" in out


def test_core_is_the_maths_and_runs_the_files_above_it():
    """core/ holds the model's maths; runs/ (config, checkpoints, outputs, locks) sits on it."""
    rank = {name: n for n, layer in enumerate(import_graph.LAYERS) for name in layer}
    assert rank["core"] < rank["runs"] < rank["slide"]
    files = {p.stem for p in (REPO / "gigamlx" / "runs").glob("*.py")}
    assert {"config", "checkpoint", "outputs", "lock", "files"} <= files
    core = {p.stem for p in (REPO / "gigamlx" / "core").glob("*.py")}
    assert not (core & files) - {"__init__"}, core & files


def test_import_graph_fails_on_a_cycle(tmp_path, capsys):
    root = _package(
        tmp_path,
        {
            "tiling/a.py": "from gigamlx.backends import b\n",
            "backends/b.py": "def f():\n    from gigamlx.tiling import a\n",
        },
    )
    assert import_graph.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "cycle: backends -> tiling -> backends" in err
    assert "backends -> tiling: imports its own layer or one above" in err


def test_import_graph_fails_on_an_engine_outside_backends(tmp_path, capsys):
    root = _package(tmp_path, {"slide/s.py": "import mlx.core as mx\n"})
    assert import_graph.main(["--root", str(root)]) == 1
    assert "imports mlx.core outside gigamlx/backends/" in capsys.readouterr().err


def test_unknown_package_must_be_placed_in_a_layer(tmp_path, capsys):
    root = _package(tmp_path, {"extras/e.py": "import numpy\n"})
    assert import_graph.main(["--root", str(root)]) == 1
    assert "extras: not in LAYERS" in capsys.readouterr().err


def test_no_kernels_python_package_of_ours(tmp_path):
    """`import kernels` must not find this project (a PyPI package of that name exists)."""
    code = (
        "import importlib.util as u; s = u.find_spec('kernels'); "
        "print('' if s is None else f'{s.origin} {list(s.submodule_search_locations or [])}')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as installed, no tree
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    ).stdout
    assert str(REPO) not in found, found


@pytest.mark.parametrize("engine", ["mlx", "torch"])
def test_engines_load_lazily(engine):
    """`import gigamlx` and its CLI module tree load no engine until a command needs one."""
    if importlib.util.find_spec(engine) is None:
        pytest.skip(f"{engine} not installed")
    code = f"import sys, gigamlx, gigamlx.cli; print('{engine}' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _map(root: Path, text: str) -> Path:
    doc = root / "docs" / "architecture.md"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return doc


def test_package_map_passes_when_it_names_every_package(tmp_path, capsys):
    root = _package(tmp_path, {"core/a.py": "", "slide/b.py": "", "api.py": ""})
    _map(tmp_path, "gigamlx/core/  bottom\ngigamlx/slide/  slides\ngigamlx/api.py  API\n")
    assert import_graph.main(["--root", str(root)]) == 0, capsys.readouterr().err


def test_package_map_fails_on_a_package_it_does_not_name(tmp_path, capsys):
    root = _package(tmp_path, {"core/a.py": "", "slide/b.py": "", "slide/deep/c.py": ""})
    _map(tmp_path, "gigamlx/core/  bottom\ngigamlx/slide/  slides\n")
    assert import_graph.main(["--root", str(root)]) == 1
    assert "gigamlx/slide/deep/: not in the package map" in capsys.readouterr().err


def test_package_map_fails_on_a_path_that_does_not_exist(tmp_path, capsys):
    root = _package(tmp_path, {"core/a.py": ""})
    _map(tmp_path, "gigamlx/core/  bottom\ngigamlx/cli/api.py  the API, misplaced\n")
    assert import_graph.main(["--root", str(root)]) == 1
    assert "names gigamlx/cli/api.py, which does not exist" in capsys.readouterr().err


def test_package_map_must_exist_unless_told_not_to_check(tmp_path, capsys):
    root = _package(tmp_path, {"core/a.py": ""})
    assert import_graph.main(["--root", str(root)]) == 1
    assert "architecture.md: missing" in capsys.readouterr().err
    assert import_graph.main(["--root", str(root), "--no-docs"]) == 0


def test_mlx_path_needs_no_torch():
    """A plain `pip install .` has no torch: the commands' modules and the mlx backend must
    import and build with torch made unimportable."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import gigamlx, gigamlx.cli, gigamlx.api, gigamlx.train.run, gigamlx.infer.predict\n"
        "import gigamlx.slide.ingest, gigamlx.synth\n"
        "from gigamlx.cli import data, eval, info, predict, report, train\n"
        "from gigamlx.backends import get_backend\n"
        "get_backend('mlx')\n"
        "try:\n"
        "    get_backend('cuda-um')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this tree, whatever is installed
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "gigamlx[cuda]" in done.stdout


def test_progress_callbacks_are_defined_once():
    """The progress callback types live in core/progress.py; everyone else imports them."""
    pattern = re.compile(r"^\w*Progress\s*=\s*Callable\[", re.M)
    homes = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "gigamlx").rglob("*.py"))
        if pattern.search(path.read_text())
    ]
    assert homes == ["gigamlx/core/progress.py"], homes


WIDE_RECORDS = {"StepResult", "PredictOptions", "provenance", "PredictResult", "StepMetrics"}


def test_wide_records_are_built_by_keyword():
    """Records of many fields are built by keyword (no `# fmt: skip` to keep a positional row)."""
    positional = []
    for path in sorted((REPO / "gigamlx").rglob("*.py")):
        source = path.read_text()
        assert "fmt: skip" not in source, path
        for node in ast.walk(ast.parse(source)):
            name = getattr(node, "func", None)
            name = getattr(name, "id", None) or getattr(name, "attr", None)
            if isinstance(node, ast.Call) and name in WIDE_RECORDS and node.args:
                positional.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert not positional, positional


def test_every_package_folder_is_a_regular_package():
    """setuptools' find_packages skips a folder without __init__.py: a plain `pip install .`
    would leave it out, while an editable install or the tests would still find it."""
    folders = {p.parent for p in (REPO / "gigamlx").rglob("*.py")} - {REPO / "gigamlx"}
    missing = [
        str(f.relative_to(REPO)) for f in sorted(folders) if not (f / "__init__.py").exists()
    ]
    assert not missing, missing
