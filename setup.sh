#!/usr/bin/env bash
# One-time set-up on a fresh machine: an optimized BLAS for MLX's Linux CPU build (when apt is
# usable; gigamlx runs without it, only slower), then gigamlx with its test/benchmark extras,
# then the fused CPU kernel of kernels/ext (optional too: without it the pure-MLX path runs).
# On macOS: a virtual environment .venv with a native arm64 Python >= 3.11 (Apple's python3 is
# 3.9, Homebrew's refuses pip outside a venv), no apt, and no kernels/ext (MLX runs on Metal).
set -euo pipefail
cd "$(dirname "$0")"

# The first native arm64 Python >= 3.11 on this Mac: the one in .venv, a versioned python3.x,
# Homebrew's, uv's, then plain python3.
find_mac_python() {
  local candidate
  for candidate in .venv/bin/python python3.13 python3.12 python3.11 \
    /opt/homebrew/bin/python3.13 /opt/homebrew/bin/python3.12 /opt/homebrew/bin/python3.11 \
    "$(command -v uv >/dev/null && uv python find '>=3.11' 2>/dev/null || true)" python3; do
    if [ -z "$candidate" ] || ! command -v "$candidate" >/dev/null; then
      continue
    fi
    if "$candidate" -c 'import platform, sys
sys.exit(not (sys.version_info >= (3, 11) and platform.machine() == "arm64"))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

setup_mac() {
  local python
  if ! python=$(find_mac_python); then
    echo "setup: no native arm64 Python >= 3.11 found (Apple's python3 is 3.9); install one" \
      "with \`brew install python@3.12\` (or \`uv python install 3.12\`), then run" \
      "\`bash setup.sh\` again" >&2
    exit 1
  fi
  if [ "$python" != .venv/bin/python ]; then
    "$python" -m venv --clear .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "setup: gigamlx is installed in .venv (kernels/ext is CPU-only: skipped, MLX uses" \
    "Metal); run \`source .venv/bin/activate\` once per shell, or prefix commands with .venv/bin/"
}

if [ "$(uname -s)" = Darwin ]; then
  setup_mac
  exit 0
fi
if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] \
   && ! ldconfig -p | grep -q libopenblas.so.0; then
  (apt-get update -qq && apt-get install -y -qq libopenblas0-pthread >/dev/null) \
    || echo "setup: could not install libopenblas0-pthread; MLX keeps its slow bundled BLAS"
fi
python3 -m pip install -q -e ".[dev]"
command -v cmake >/dev/null || python3 -m pip install -q "cmake>=3.25"
# --no-build-isolation: compile against the exact mlx (and nanobind) installed above
python3 -m pip install -q --no-build-isolation ./kernels/ext \
  || echo "setup: could not build kernels/ext; gigamlx will use the slower pure-MLX tail"
