"""setup.sh on macOS and on Linux, simulated: a faked `uname`, fake Pythons (that log each
call and act out venv, pip and the checks setup.sh makes) and fake apt/dpkg on a bare PATH.
Nothing is downloaded or installed; the same tests run on a Mac."""

import shutil
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).parent.parent / "setup.sh"
# A Python whose behaviour the test picks with files in $FAKE_WORLD: `fits` (>= 3.11, right
# arch), `ensurepip` (venv can put pip in), `system-blas` (an OpenBLAS is installed),
# `gfortran` (the Fortran runtime is installed), `system-pip` (the system Python has pip).
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$0 $*" >> "$SETUP_LOG"
world=$FAKE_WORLD
in_venv=false; case $0 in *.venv/bin/*) in_venv=true;; esac
if [ "$1" = -c ]; then
  case $2 in
    *version_info*) $in_venv || [ -e "$world/fits" ];;
    *preload_blas*) [ -e "$world/system-blas" ] || [ -e .venv/opt/openblas/libopenblas.so.0 ];;
    *ctypes.CDLL*) [ -e "$world/gfortran" ];;
    *urllib*) touch "$3/pip-99.0-py3-none-any.whl";;
    *) echo 3.11.2;;
  esac
  exit
fi
case "$1 $2 $3" in
  "-m venv --clear")
    mkdir -p .venv/bin && cp "$0" .venv/bin/python
    case $* in *--without-pip*) ;; *) [ -e "$world/ensurepip" ] && touch .venv/has-pip;; esac;;
  "-m pip --version")
    if $in_venv; then [ -e .venv/has-pip ]; else [ -e "$world/system-pip" ]; fi;;
  "-m pip download")
    [ -e "$world/system-pip" ] || exit 1
    touch "${@: -2:1}/pip-99.0-py3-none-any.whl";;
  "-m pip install")
    $in_venv || { echo "error: externally-managed-environment" >&2; exit 1; }
    [ -e .venv/has-pip ];;
  *.whl/pip\ install*) touch .venv/has-pip;;
esac
"""
FAKE_APT = r"""#!/usr/bin/env bash
echo "apt-get $*" >> "$SETUP_LOG"
if [ "$1" = download ]; then for pkg in "${@:2}"; do
  case $pkg in -*) ;; *) touch "$pkg.deb";; esac; done; fi
"""
FAKE_DPKG = r"""#!/usr/bin/env bash
echo "dpkg $*" >> "$SETUP_LOG"
lib=$3/usr/lib/x86_64-linux-gnu; mkdir -p "$lib/openblas-pthread"
case $2 in
  *libopenblas0-pthread*) touch "$lib/openblas-pthread/libopenblas.so.0";;
  *libgfortran5*) touch "$lib/libgfortran.so.5.0.0"
    ln -s libgfortran.so.5.0.0 "$lib/libgfortran.so.5";;
  *libquadmath0*) touch "$lib/libquadmath.so.0";;
esac
"""
# the real tools setup.sh uses, linked into the fake bin folder that is the whole PATH (a real
# python3.x or apt-get elsewhere on PATH must not be found)
TOOLS = "bash cat cksum cp dirname find head ln ls mkdir mktemp rm sort touch".split()


def _fake(bin_dir: Path, name: str, text: str) -> None:
    path = bin_dir / name
    path.write_text(text)
    path.chmod(0o755)


class World:
    """A copy of setup.sh in a fake repo, the fakes it calls and the log of their calls."""

    def __init__(self, tmp_path: Path, system: str, machine: str, uid: int):
        self.repo, self.bin, self.flags = tmp_path / "repo", tmp_path / "bin", tmp_path / "world"
        for folder in (self.repo / "kernels" / "ext", self.bin, self.flags):
            folder.mkdir(parents=True)
        shutil.copy(SETUP, self.repo / "setup.sh")
        for tool in TOOLS:
            (self.bin / tool).symlink_to(shutil.which(tool))
        (self.repo / "pyproject.toml").write_text("[project]\n")
        (self.repo / "kernels" / "ext" / "ext.cpp").write_text("int f();\n")
        uname = f'#!/bin/sh\n[ "$1" = -m ] && echo {machine} || echo {system}\n'
        _fake(self.bin, "uname", uname)
        _fake(self.bin, "id", f"#!/bin/sh\necho {uid}\n")
        _fake(self.bin, "python3", FAKE_PYTHON)
        for tool in ("cmake", "ldconfig", "sudo"):
            _fake(self.bin, tool, f'#!/bin/sh\necho "{tool} $*" >> "$SETUP_LOG"\n')
        self.log = tmp_path / "calls.log"
        self.log.touch()
        self.env = {
            "PATH": str(self.bin),
            "SETUP_LOG": str(self.log),
            "FAKE_WORLD": str(self.flags),
            "HOME": str(tmp_path),
        }

    def has(self, *flags: str) -> None:
        for flag in flags:
            (self.flags / flag).touch()

    def with_apt(self) -> None:
        _fake(self.bin, "apt-get", FAKE_APT)
        _fake(self.bin, "dpkg", FAKE_DPKG)

    def run(self) -> subprocess.CompletedProcess:
        self.log.write_text("")
        cmd = [str(self.bin / "bash"), str(self.repo / "setup.sh")]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)

    def calls(self) -> str:
        return self.log.read_text()


@pytest.fixture
def world(tmp_path):
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no {' '.join(missing)}")
    return lambda system="Linux", machine="x86_64", uid=1000: World(tmp_path, system, machine, uid)


@pytest.fixture
def mac(world):
    """A Mac: Apple's python3 fails the version check; apt-get, cmake and uv log any call."""
    mac = world("Darwin", "arm64", 501)
    _fake(mac.bin, "apt-get", '#!/bin/sh\necho "apt-get $*" >> "$SETUP_LOG"\n')
    return mac


def test_setup_mac_without_python311_names_the_fix(mac):
    done = mac.run()
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "brew install python@3.12" in done.stderr
    assert not (mac.repo / ".venv").exists()


def test_setup_mac_makes_venv_installs_and_skips_ext(mac):
    _fake(mac.bin, "python3.12", FAKE_PYTHON)  # Homebrew's, arm64
    mac.has("fits", "ensurepip")
    (mac.bin / "python3").write_text("#!/bin/sh\nexit 1\n")  # Apple's 3.9
    done = mac.run()
    assert done.returncode == 0, done.stderr
    calls = mac.calls()
    assert f"{mac.bin}/python3.12 -m venv --clear .venv" in calls
    assert ".venv/bin/python -m pip install -q -e .[dev]" in calls
    assert "apt-get" not in calls and "cmake" not in calls and "kernels/ext" not in calls
    assert "source .venv/bin/activate" in done.stdout
    assert mac.run().returncode == 0  # a second run reuses .venv
    assert "-m venv" not in mac.calls()


def test_setup_linux_externally_managed_python_gets_a_venv(world):
    """The system python3 refuses pip installs (PEP 668): everything goes into .venv."""
    linux = world()
    linux.has("fits", "ensurepip", "system-blas")
    done = linux.run()
    assert done.returncode == 0, done.stderr
    calls = linux.calls()
    assert f"{linux.bin}/python3 -m venv --clear .venv" in calls
    assert f"{linux.bin}/python3 -m pip install" not in calls
    assert ".venv/bin/python -m pip install -q -e .[dev]" in calls
    assert ".venv/bin/python -m pip install -q --no-build-isolation ./kernels/ext" in calls
    assert "source .venv/bin/activate" in done.stdout
    assert "OpenBLAS" not in done.stdout  # found: nothing to say


def test_setup_linux_rerun_is_idempotent_and_quick(world):
    linux = world()
    linux.has("fits", "ensurepip")
    linux.with_apt()
    assert linux.run().returncode == 0
    done = linux.run()
    assert done.returncode == 0, done.stderr
    assert "already set up" in done.stdout and "source .venv/bin/activate" in done.stdout
    calls = linux.calls()
    assert "-m venv" not in calls and "pip install" not in calls and "apt-get" not in calls
    (linux.repo / "pyproject.toml").write_text("[project]\nname = 'changed'\n")
    assert linux.run().returncode == 0
    assert ".venv/bin/python -m pip install -q -e .[dev]" in linux.calls()


def test_setup_linux_non_root_unpacks_openblas_into_venv(world):
    """No root: no apt install; Debian's OpenBLAS (and its Fortran runtime, missing here) is
    unpacked into .venv, where gigamlx's BLAS preload looks."""
    linux = world(uid=1000)
    linux.has("fits", "ensurepip")
    linux.with_apt()
    done = linux.run()
    assert done.returncode == 0, done.stderr
    calls = linux.calls()
    assert "apt-get install" not in calls and "apt-get update" not in calls
    assert "sudo" not in calls
    assert "apt-get download -qq libopenblas0-pthread" in calls
    assert "apt-get download -qq libgfortran5" in calls
    unpacked = sorted(p.name for p in (linux.repo / ".venv/opt/openblas").iterdir())
    assert unpacked == ["libgfortran.so.5", "libopenblas.so.0", "libquadmath.so.0"]
    assert "no OpenBLAS" not in done.stdout


def test_setup_linux_non_root_keeps_a_system_fortran_runtime(world):
    linux = world(uid=1000)
    linux.has("fits", "ensurepip", "gfortran")
    linux.with_apt()
    assert linux.run().returncode == 0
    assert "libgfortran5" not in linux.calls()
    assert [p.name for p in (linux.repo / ".venv/opt/openblas").iterdir()] == ["libopenblas.so.0"]


def test_setup_linux_root_installs_openblas_with_apt(world):
    linux = world(uid=0)
    linux.has("fits", "ensurepip")
    linux.with_apt()
    assert linux.run().returncode == 0
    assert "apt-get install -y -qq libopenblas0-pthread" in linux.calls()


def test_setup_linux_without_apt_says_once_how_to_get_openblas(world):
    """No apt (or no route to it): one line that says what it costs and the command that
    fixes it; the set-up still succeeds, and a re-run does not repeat it."""
    linux = world(uid=1000)
    linux.has("fits", "ensurepip")
    done = linux.run()
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "OpenBLAS" in line]
    assert len(lines) == 1 and "slower" in lines[0]
    assert "sudo apt install libopenblas0-pthread" in lines[0]
    assert "apt-get" not in linux.calls()
    assert "OpenBLAS" not in linux.run().stdout


@pytest.mark.parametrize("system_pip", [True, False])
def test_setup_linux_without_ensurepip_bootstraps_pip(world, system_pip):
    """Debian's python3 without python3-venv: venv --without-pip, then a pip wheel (from the
    system's pip, else fetched from the index) installs itself into .venv."""
    linux = world()
    linux.has("fits", "system-blas", *(["system-pip"] if system_pip else []))
    done = linux.run()
    assert done.returncode == 0, done.stderr
    calls = linux.calls()
    assert f"{linux.bin}/python3 -m venv --clear --without-pip .venv" in calls
    assert f"{linux.bin}/python3 -m pip download" in calls
    assert ("urllib" in calls) != system_pip
    assert "pip-99.0-py3-none-any.whl/pip install -q --no-index" in calls
    assert ".venv/bin/python -m pip install -q -e .[dev]" in calls


def test_setup_linux_picks_a_python311_over_an_old_python3(world):
    linux = world(machine="aarch64")
    linux.has("ensurepip", "system-blas")
    _fake(linux.bin, "python3.12", FAKE_PYTHON.replace('[ -e "$world/fits" ]', "true"))
    done = linux.run()
    assert done.returncode == 0, done.stderr
    assert f"{linux.bin}/python3.12 -m venv --clear .venv" in linux.calls()


def test_setup_linux_without_python311_names_the_fix(world):
    linux = world()
    done = linux.run()
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "Python >= 3.11" in done.stderr
    assert not (linux.repo / ".venv").exists()
