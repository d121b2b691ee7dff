#!/usr/bin/env bash
# One-time set-up on a fresh machine: an optimized BLAS for MLX's Linux CPU build (when apt is
# usable; gigamlx runs without it, only slower), then gigamlx with its test/benchmark extras.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] \
   && ! ldconfig -p | grep -q libopenblas.so.0; then
  (apt-get update -qq && apt-get install -y -qq libopenblas0-pthread >/dev/null) \
    || echo "setup: could not install libopenblas0-pthread; MLX keeps its slow bundled BLAS"
fi
python3 -m pip install -q -e ".[dev]"
