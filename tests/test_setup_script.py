"""setup.sh on macOS, simulated here: a faked `uname` and fake Pythons on a bare PATH."""

import shutil
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).parent.parent / "setup.sh"
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$0 $*" >> "$SETUP_LOG"
if [ "$1" = -c ]; then exit {check}; fi
if [ "$1 $2" = "-m venv" ]; then mkdir -p .venv/bin && cp "$0" .venv/bin/python; fi
"""


def _fake(bin_dir: Path, name: str, text: str) -> None:
    path = bin_dir / name
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def mac(tmp_path):
    """A copy of setup.sh whose world is a Mac: uname says Darwin arm64, Apple's python3 fails
    the version check, and apt-get, cmake and uv log any call (none is expected)."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    repo.mkdir()
    bin_dir.mkdir()
    shutil.copy(SETUP, repo / "setup.sh")
    _fake(bin_dir, "uname", '#!/bin/sh\n[ "$1" = -m ] && echo arm64 || echo Darwin\n')
    _fake(bin_dir, "python3", FAKE_PYTHON.format(check=1))  # Apple's 3.9
    for tool in ("apt-get", "cmake", "ldconfig"):
        _fake(bin_dir, tool, f'#!/bin/sh\necho "{tool} $*" >> "$SETUP_LOG"\n')
    log = tmp_path / "calls.log"
    log.touch()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SETUP_LOG": str(log), "HOME": str(tmp_path)}

    def run() -> subprocess.CompletedProcess:
        cmd = ["bash", str(repo / "setup.sh")]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

    return repo, bin_dir, log, run


def test_setup_mac_without_python311_names_the_fix(mac):
    repo, _, log, run = mac
    done = run()
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "brew install python@3.12" in done.stderr
    assert not (repo / ".venv").exists()


def test_setup_mac_makes_venv_installs_and_skips_ext(mac):
    repo, bin_dir, log, run = mac
    _fake(bin_dir, "python3.12", FAKE_PYTHON.format(check=0))  # Homebrew's, arm64
    done = run()
    assert done.returncode == 0, done.stderr
    calls = log.read_text()
    assert f"{bin_dir}/python3.12 -m venv --clear .venv" in calls
    assert ".venv/bin/python -m pip install -q -e .[dev]" in calls
    assert "apt-get" not in calls and "cmake" not in calls and "kernels/ext" not in calls
    assert "source .venv/bin/activate" in done.stdout
    log.write_text("")
    assert run().returncode == 0  # a second run reuses .venv
    assert "-m venv" not in log.read_text()
