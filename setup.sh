#!/usr/bin/env bash
# One-time set-up, the same on every OS: a virtual environment .venv in this folder with a
# Python >= 3.11 (native arm64 on macOS), gigamlx installed editable with its test/benchmark
# extras; on Linux also an optimized BLAS for MLX's CPU build (apt when root, else Debian's
# OpenBLAS unpacked into .venv; gigamlx runs without it, only slower) and the fused CPU kernel
# of kernels/ext (optional too: without it the pure-MLX path runs). On macOS MLX uses
# Accelerate and Metal: no BLAS step, no kernels/ext. Nothing is installed outside .venv unless
# run as root with apt. A second run with nothing changed only checks and returns.
# docs/install.md says what each step does and how to fix what it reports.
set -euo pipefail
cd "$(dirname "$0")"

OS=$(uname -s)
STAMP=.venv/.gigamlx-setup  # what the last complete set-up installed from (see fingerprint)
BLAS_DIR=.venv/opt/openblas  # gigamlx/backends/mlx/blas.py looks here (VENV_BLAS_DIR)
BLAS_FIX="sudo apt install libopenblas0-pthread (Fedora: sudo dnf install openblas)"

say() { echo "setup: $*"; }

# Whether $1 is a Python >= 3.11 (on macOS also native arm64, not one under Rosetta).
python_fits() {
  "$1" -c 'import platform, sys
sys.exit(not (sys.version_info >= (3, 11)
              and (sys.platform != "darwin" or platform.machine() == "arm64")))' 2>/dev/null
}

# The first fitting Python: the one in .venv, the python3 first on PATH, a versioned
# python3.x, Homebrew's, then uv's.
find_python() {
  local candidate
  for candidate in .venv/bin/python python3 python3.14 python3.13 python3.12 python3.11 \
    /opt/homebrew/bin/python3.13 /opt/homebrew/bin/python3.12 /opt/homebrew/bin/python3.11 \
    "$(command -v uv >/dev/null && uv python find '>=3.11' 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null && python_fits "$candidate"
    then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

no_python() {
  if [ "$OS" = Darwin ]; then
    say "no native arm64 Python >= 3.11 found (Apple's python3 is 3.9); install one with" \
      "\`brew install python@3.12\` (or \`uv python install 3.12\`), then run" \
      "\`bash setup.sh\` again" >&2
  else
    say "no Python >= 3.11 found; install one (Debian/Ubuntu: \`sudo apt install" \
      "python3.11-venv\`; without root: \`uv python install 3.12\`), then run" \
      "\`bash setup.sh\` again" >&2
  fi
  exit 1
}

# Fetch the newest pip wheel into $2 with Python $1 alone (no pip anywhere yet): from the
# package index pip itself would use, checked against the index's sha256.
fetch_pip_wheel() {
  "$1" -c 'import hashlib, os, re, sys, urllib.parse, urllib.request
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + "/pip/"
page = urllib.request.urlopen(index, timeout=60).read().decode()
links = re.findall(r"href=\"([^\"]*?(pip-([0-9.]+)-py3-none-any\.whl)#sha256=([0-9a-f]+))\"", page)
url, name, _, digest = max(links, key=lambda link: [int(v) for v in link[2].split(".")])
data = urllib.request.urlopen(urllib.parse.urljoin(index, url), timeout=60).read()
if hashlib.sha256(data).hexdigest() != digest:
    sys.exit(f"{name}: sha256 mismatch")
open(os.path.join(sys.argv[1], name), "wb").write(data)' "$2"
}

# pip inside .venv where `python -m venv` could not put one (Debian's python3 without the
# python3-venv package has no ensurepip): a pip wheel, downloaded by the system's pip or
# fetched directly, runs itself to install itself.
bootstrap_pip() {
  local python=$1 tmp wheel
  tmp=$(mktemp -d)
  if "$python" -m pip download -q --no-deps --only-binary :all: -d "$tmp" pip 2>/dev/null \
    || fetch_pip_wheel "$python" "$tmp"; then
    wheel=$(ls "$tmp"/pip-*.whl 2>/dev/null | head -n 1)
  fi
  if [ -z "${wheel:-}" ] || ! .venv/bin/python "$wheel/pip" install -q --no-index "$wheel"; then
    rm -rf "$tmp"
    say "could not put pip into .venv (no ensurepip, no pip wheel reached); fix:" \
      "\`sudo apt install python3-venv\`, then run \`bash setup.sh\` again" >&2
    exit 1
  fi
  rm -rf "$tmp"
}

make_venv() {
  local python=$1
  if [ "$python" != .venv/bin/python ]; then
    say "making .venv with $python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
    "$python" -m venv --clear .venv 2>/dev/null || "$python" -m venv --clear --without-pip .venv
    rm -f "$STAMP"
  fi
  .venv/bin/python -m pip --version >/dev/null 2>&1 || bootstrap_pip "$python"
}

# What a complete set-up depends on: a changed file here makes the next run install again.
fingerprint() {
  { uname -sm; cat setup.sh pyproject.toml 2>/dev/null
    find kernels/ext -type f ! -path '*/build/*' ! -path '*.egg-info*' 2>/dev/null \
      | LC_ALL=C sort | while read -r file; do cat "$file"; done; } | cksum
}

blas_found() {
  .venv/bin/python -c 'import sys
from gigamlx.backends.mlx.blas import preload_blas
sys.exit(preload_blas().name != "openblas")' 2>/dev/null
}

# Debian's OpenBLAS (and the Fortran runtime, where the system lacks it) unpacked into .venv:
# `apt-get download` and `dpkg -x` need no root.
unpack_openblas() {
  local tmp deb lib
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq libopenblas0-pthread) >/dev/null 2>&1 || { rm -rf "$tmp"
    return 1; }
  for lib in "libgfortran.so.5 libgfortran5" "libquadmath.so.0 libquadmath0"; do
    set -- $lib
    .venv/bin/python -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$1" 2>/dev/null \
      || (cd "$tmp" && apt-get download -qq "$2") >/dev/null 2>&1 || true
  done
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root"; done
  mkdir -p "$BLAS_DIR"
  find "$tmp/root" -path '*openblas-pthread/libopenblas.so.0' -exec cp -L {} "$BLAS_DIR/" \;
  find "$tmp/root" \( -name libgfortran.so.5 -o -name libquadmath.so.0 \) \
    -exec cp -L {} "$BLAS_DIR/" \;
  rm -rf "$tmp"
}

# MLX's Linux CPU build binds cblas at load time; without OpenBLAS it keeps a slow bundled one.
setup_blas() {
  blas_found && return 0
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing libopenblas0-pthread with apt"
    (apt-get update -qq && apt-get install -y -qq libopenblas0-pthread >/dev/null) || true
  elif command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
    say "unpacking Debian's OpenBLAS into $BLAS_DIR (no root needed)"
    unpack_openblas || true
  fi
  blas_found && return 0
  rm -rf "$BLAS_DIR"
  say "no OpenBLAS: MLX keeps its bundled BLAS, and CPU matmuls run tens of times slower" \
    "(docs/install.md); fix: $BLAS_FIX, then \`bash setup.sh\` again"
}

build_ext() {
  command -v cmake >/dev/null || .venv/bin/python -m pip install -q "cmake>=3.25"
  # --no-build-isolation: compile against the exact mlx (and nanobind) installed in .venv
  .venv/bin/python -m pip install -q --no-build-isolation ./kernels/ext \
    || say "could not build kernels/ext (it needs a C++17 compiler and the Python headers;" \
      "Debian/Ubuntu: sudo apt install g++ python3-dev); gigamlx will use the slower pure-MLX path"
}

main() {
  local python stamp
  python=$(find_python) || no_python
  make_venv "$python"
  stamp=$(fingerprint)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp" ]; then
    say "already set up in .venv (nothing changed since)"
  else
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev]"
    if [ "$OS" = Darwin ]; then
      say "kernels/ext is CPU-only: skipped (MLX uses Metal); no BLAS step (Accelerate)"
    else
      setup_blas
      build_ext
    fi
    echo "$stamp" >"$STAMP"
  fi
  say "gigamlx is installed in .venv; run \`source .venv/bin/activate\` once per shell, or" \
    "prefix commands with .venv/bin/ (e.g. .venv/bin/gigamlx info)"
}

main
