"""The compiled fused kernels (kernels/ext, module `gigamlx_fused`): loader, choice and wrappers.

The extension is optional: `choose_kernels` decides once, when a backend is built, whether the
fused kernels or the pure-MLX ops (the reference, and what Metal runs) compute the model; the
reason is reported by `gigamlx info` and logged once.
"""

from __future__ import annotations

import logging
from functools import cache
from types import ModuleType
from typing import NamedTuple

import mlx.core as mx
import numpy as np

from gigamlx.backends import KERNELS

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


class KernelPath(NamedTuple):
    """Which model path the mlx backend runs, chosen once when the backend is built."""

    name: str  # "fused" (the compiled CPU kernels of kernels/ext) or "mlx" (pure MLX ops)
    reason: str

    @property
    def fused(self) -> bool:
        return self.name == "fused"


def choose_kernels(requested: str = "auto") -> KernelPath:
    """Resolve `requested` ("auto", "fused" or "mlx") to the path this process runs.

    "auto" takes the fused kernels when the extension loads and the default device is the CPU
    (they have no Metal/CUDA implementation), else the pure-MLX ops; "fused" insists.

    Raises:
        ValueError: an unknown choice, or "fused" where the kernels cannot run.
    """
    if requested not in KERNELS:
        raise ValueError(f"unknown kernels {requested!r}; choose one of {', '.join(KERNELS)}")
    if requested == "mlx":
        return KernelPath("mlx", "pure-MLX ops, as asked")
    if mx.default_device() != mx.cpu:
        why = f"default device is {mx.default_device()}; the fused kernels are CPU-only"
    else:
        module, why = _load()
        if module is not None:
            return KernelPath("fused", why)
    if requested == "fused":
        raise ValueError(f"--kernels fused cannot run here: {why}; use --kernels mlx")
    if why not in _logged:  # once per process: a missing build is worth a warning
        _logged.add(why)
        (logger.warning if "built" in why else logger.info)(
            "fused kernels inactive (%s): using the pure-MLX path", why
        )
    return KernelPath("mlx", why)


def _built_at_least(major: int, minor: int) -> bool:
    """Whether the extension loaded and its version is at least major.minor (an older build in
    site-packages lacks the later features until `bash setup.sh` rebuilds it)."""
    module, _ = _load()
    version = getattr(module, "__version__", "0")
    return tuple(int(v) for v in version.split(".")[:2]) >= (major, minor)


def reads_uint8() -> bool:
    """Whether the built extension takes the uint8 image (0.2 and later; else float32)."""
    return _built_at_least(0, 2)


def standardises() -> bool:
    """Whether the built extension standardises the input itself (0.3 and later)."""
    return _built_at_least(0, 3)


def turns_windows() -> bool:
    """Whether the built extension has `turn_window` with gains (0.5 and later)."""
    return _built_at_least(0, 5)


def copies_uint8() -> bool:
    """Whether the built extension has `uint8_array` and its tile loss takes uint8 targets
    (0.7 and later)."""
    return _built_at_least(0, 7)


def fuses_middle() -> bool:
    """Whether the built extension has `middle`: down2 ... up2 as one op (0.8 and later)."""
    return _built_at_least(0, 8)


def uint8_array(array: np.ndarray) -> mx.array:
    """`mx.array(array)` for a uint8 array, copied by the extension: one memcpy over the
    cores without the GIL, where MLX's own conversion copies element by element on one
    thread (a training window is copied into MLX twice a step). Extension 0.7."""
    module, _ = _load()
    return module.uint8_array(np.ascontiguousarray(array, dtype=np.uint8))


def turn_window(
    block: np.ndarray,
    table: np.ndarray | None,
    flip: bool,
    rot90: int,
    gains: tuple[np.ndarray, np.ndarray] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """np.rot90(block flipped left-right if `flip`, rot90) as a contiguous array, each RGB
    looked up in `table` (augment.lut32) when given, then lit by `gains` when given: one pass
    without the GIL (extension 0.5).

    Args:
        block: (h, w) or (h, w, 3) uint8, any strides.
        table: (2^24,) uint32 colours packed as bytes R, G, B, 0, indexed R << 16 | G << 8 | B.
        gains: float32 (out rows,) and (out cols,) factors (augment.apply_gains), RGB only.
        out: a C-contiguous uint8 array of the turned shape to write into (rows of a larger
            window: no copy afterwards); a new one when None.
    """
    module, _ = _load()
    h, w = block.shape[:2]
    shape = ((w, h) if rot90 % 2 else (h, w)) + block.shape[2:]
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        got = f"{out.dtype} {out.shape}"
        raise ValueError(f"turn_window: out must be C-contiguous uint8 {shape}, got {got}")
    channel_axis = () if block.ndim == 3 else (None,)  # the kernel takes (h, w, C) views
    gain_y, gain_x = (None, None) if gains is None else gains
    module.turn_window(
        block[..., *channel_axis], table, flip, rot90, out[..., *channel_axis], gain_y, gain_x
    )
    return out


# (mean, std, x_keep_yx): standardise x in the kernel, (x - mean) / std per channel, zero
# outside the window box x_keep_yx (core/normalise.py; bit for bit the pure-MLX arithmetic)
KernelNorm = tuple[tuple[float, float, float], tuple[float, float, float], tuple[int, ...]]


def _norm_args(norm: KernelNorm | None) -> tuple:
    return () if norm is None else (list(norm[0]), list(norm[1]), tuple(norm[2]))


def down1(
    x: mx.array,
    weight: mx.array,
    bias: mx.array,
    stride: int,
    pad: int,
    keep_yx: tuple[int, int, int, int],
    norm: KernelNorm | None = None,
) -> mx.array:
    """Fused strided conv + bias + ReLU + zeroing (only on the fused path).

    Args:
        x: (N, H, W, C_in) the network input, float32 or uint8 (read as value / 255, bit for
            bit as astype(float32) / 255); it gets no gradient.
        weight: (C_out, k, k, C_in) with k a multiple of `stride`; bias: (C_out,).
        keep_yx: (y0, x0, y1, x1) output box kept; outside it the activations are zeroed.
        norm: the input's standardisation (`KernelNorm`, extension 0.3), or None.

    Returns:
        (N, Ho, Wo, C_out) as relu(mx.conv2d(x, weight, stride, pad) + bias), zeroed outside
        `keep_yx`; differentiable in weight and bias only.
    """
    module, _ = _load()
    return module.down1(x, weight, bias, stride, pad, keep_yx, *_norm_args(norm))


def middle(
    h1: mx.array,
    params: list[mx.array],
    down2: tuple[int, int],
    down3: tuple[int, int],
    keeps_yx: list[tuple[int, int, int, int]],
) -> mx.array:
    """Fused middle of GigaUNet (only on the fused path): every layer between the first and
    the last up-sampling, each conv + bias + ReLU + zeroing, and the skip joins.

    Args:
        h1: (N, H, W, C_1) the first layer's output.
        params: down2's, down3's, up3's and up2's weight and bias, in that order (MLX layout:
            (C_out, k, k, C_in); the two conv-transposes have kernel == stride, no pad).
        down2, down3: (stride, pad) of the two strided convs (kernel a multiple of the stride).
        keeps_yx: for down2, down3, up3 and up2, the (y0, x0, y1, x1) box of its output kept;
            outside it the activations are zeroed.

    Returns:
        (N, H, W, C_up2 + C_1): [up2's output, h1] along channels, the last up-sampling's
        input; differentiable in h1 and every parameter (extension 0.8).
    """
    module, _ = _load()
    return module.middle(h1, params, tuple(down2), tuple(down3), [tuple(k) for k in keeps_yx])


def head_logits(
    h2: mx.array,
    x: mx.array,
    w_up: mx.array,
    b_up: mx.array,
    w_head: mx.array,
    b_head: mx.array,
    keep_yx: tuple[int, int, int, int],
    norm: KernelNorm | None = None,
) -> mx.array:
    """Fused up-sample + ReLU + zeroing + concat(x) + 3x3 head conv (only on the fused path).

    Args:
        h2: (N, h, w, C_in) input of the up-sampling conv-transpose (kernel == stride s).
        x: (N, h*s, w*s, C_x) the network input, concatenated after the up-sampling; float32
            or uint8 (read as value / 255).
        w_up: (C_up, s, s, C_in); b_up: (C_up,).
        w_head: (1, 3, 3, C_up + C_x); b_head: (1,).
        keep_yx: (y0, x0, y1, x1) full-resolution window box kept; outside it the up-sampled
            activations are zeroed.
        norm: the input's standardisation (`KernelNorm`, extension 0.3), or None.

    Returns:
        Logits (N, h*s, w*s, 1); differentiable in everything but x.
    """
    module, _ = _load()
    return module.head_logits(h2, x, w_up, b_up, w_head, b_head, keep_yx, *_norm_args(norm))


def tile_loss(
    z: mx.array, g: mx.array, crop_yx: tuple[int, int], coefficients: tuple[float, float, float]
) -> tuple[mx.array, mx.array]:
    """Surrogate value and per-row statistics on the owned crop (only on the fused path).

    Args:
        z: (1, H, W, 1) window logits.
        g: (h, w) targets of the crop at `crop_yx`: float32, or uint8 where `copies_uint8()`.
        coefficients: (a, b, c): value = sum((a*g + b) * p) + c * sum(bce(z, g)).

    Returns:
        value () differentiable in z, and rows (6, h): per-row sums of p*g, p, g, bce, hard*g,
        hard (not differentiable). Where z comes straight from `head_logits` and is not yet
        evaluated, the extension (0.7.7) computes the logits row by row inside the loss, forward
        and backward, without writing them out: the same bits, and z is never evaluated.
    """
    module, _ = _load()
    a, b, c = coefficients
    return module.tile_loss(z, g, crop_yx[0], crop_yx[1], float(a), float(b), float(c))
