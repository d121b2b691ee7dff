#!/usr/bin/env bash
# One-time set-up on a fresh machine: an optimized BLAS for MLX's Linux CPU build (when apt is
# usable; gigamlx runs without it, only slower), then gigamlx with its test/benchmark extras,
# then the fused CPU kernel of kernels/ext (optional too: without it the pure-MLX path runs).
set -euo pipefail
cd "$(dirname "$0")"
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
