"""The compiled fused tail (kernels/ext, module `gigamlx_fused`): loader, switch and wrappers.

The extension is optional: when it is not built, fails its smoke test, the default device is
not the CPU, or GIGAMLX_FUSED=0, callers take the pure-MLX path (the reference), and the
reason is logged once.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from types import ModuleType

import mlx.core as mx

logger = logging.getLogger(__name__)
_logged: set[str] = set()


@cache
def _load() -> tuple[ModuleType | None, str]:
    """Import and smoke-test the extension once: (module or None, why)."""
    try:
        import gigamlx_fused
    except ImportError as error:
        return None, f"not built ({error}); `bash setup.sh` builds it"
    try:  # a nanobind ABI mismatch with mlx only shows when an array crosses
        h2 = mx.zeros((1, 1, 1, 4))
        x = mx.zeros((1, 4, 4, 3))
        z = gigamlx_fused.head_logits(
            h2,
            x,
            mx.zeros((3, 4, 4, 4)),
            mx.zeros(3),
            mx.zeros((1, 3, 3, 6)),
            mx.ones(1),
            (0, 0, 4, 4),
        )
        mx.eval(z)
        if float(z.sum()) != 16.0:
            raise RuntimeError(f"wrong smoke-test result {float(z.sum())}")
    except Exception as error:  # noqa: BLE001 - any failure means: use the reference path
        return None, f"built but unusable: {error}"
    return gigamlx_fused, f"gigamlx_fused {gigamlx_fused.__version__}"


def status() -> tuple[bool, str]:
    """(active, reason): whether the fused path is used now, and why (for `gigamlx info`)."""
    if os.environ.get("GIGAMLX_FUSED", "1") == "0":
        return False, "disabled by GIGAMLX_FUSED=0"
    if mx.default_device() != mx.cpu:
        return False, f"default device is {mx.default_device()}; the fused kernel is CPU-only"
    module, reason = _load()
    return module is not None, reason


def active() -> bool:
    """Whether to take the fused path; logs the reason once when it is not taken."""
    ok, reason = status()
    if not ok and reason not in _logged:
        _logged.add(reason)
        failed = "built" in reason  # not built / built but unusable: worth a warning
        log = logger.warning if failed else logger.info
        log("fused tail kernel inactive (%s): using the pure-MLX path", reason)
    return ok


def down1_active() -> bool:
    """Whether to take the fused first layer: `active()`, unless GIGAMLX_FUSED_DOWN1=0."""
    return os.environ.get("GIGAMLX_FUSED_DOWN1", "1") != "0" and active()


def down1(
    x: mx.array,
    weight: mx.array,
    bias: mx.array,
    stride: int,
    pad: int,
    keep_yx: tuple[int, int, int, int],
) -> mx.array:
    """Fused strided conv + bias + ReLU + zeroing (call only if `active()`).

    Args:
        x: (N, H, W, C_in) the network input, float32 or uint8 (read as value / 255, bit for
            bit as astype(float32) / 255); it gets no gradient.
        weight: (C_out, k, k, C_in) with k a multiple of `stride`; bias: (C_out,).
        keep_yx: (y0, x0, y1, x1) output box kept; outside it the activations are zeroed.

    Returns:
        (N, Ho, Wo, C_out) as relu(mx.conv2d(x, weight, stride, pad) + bias), zeroed outside
        `keep_yx`; differentiable in weight and bias only.
    """
    module, _ = _load()
    return module.down1(x, weight, bias, stride, pad, keep_yx)


def head_logits(
    h2: mx.array,
    x: mx.array,
    w_up: mx.array,
    b_up: mx.array,
    w_head: mx.array,
    b_head: mx.array,
    keep_yx: tuple[int, int, int, int],
) -> mx.array:
    """Fused up-sample + ReLU + zeroing + concat(x) + 3x3 head conv (call only if `active()`).

    Args:
        h2: (N, h, w, C_in) input of the up-sampling conv-transpose (kernel == stride s).
        x: (N, h*s, w*s, C_x) the network input, concatenated after the up-sampling; float32
            or uint8 (read as value / 255).
        w_up: (C_up, s, s, C_in); b_up: (C_up,).
        w_head: (1, 3, 3, C_up + C_x); b_head: (1,).
        keep_yx: (y0, x0, y1, x1) full-resolution window box kept; outside it the up-sampled
            activations are zeroed.

    Returns:
        Logits (N, h*s, w*s, 1); differentiable in everything but x.
    """
    module, _ = _load()
    return module.head_logits(h2, x, w_up, b_up, w_head, b_head, keep_yx)


def tile_loss(
    z: mx.array, g: mx.array, crop_yx: tuple[int, int], coefficients: tuple[float, float, float]
) -> tuple[mx.array, mx.array]:
    """Surrogate value and per-row statistics on the owned crop (call only if `active()`).

    Args:
        z: (1, H, W, 1) window logits.
        g: (h, w) float32 targets of the crop at `crop_yx`.
        coefficients: (a, b, c): value = sum((a*g + b) * p) + c * sum(bce(z, g)).

    Returns:
        value () differentiable in z, and rows (6, h): per-row sums of p*g, p, g, bce, hard*g,
        hard (not differentiable).
    """
    module, _ = _load()
    a, b, c = coefficients
    return module.tile_loss(z, g, crop_yx[0], crop_yx[1], float(a), float(b), float(c))
