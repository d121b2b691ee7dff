"""Whole-image references for the exactness tests: torch float64, and MLX float32.

The float64 reference is an independent implementation (PyTorch) of the same spec, run on
the whole zero-padded image with autograd; it is what "exact" is measured against.

A ReLU whose pre-activation lies within float32 rounding of zero may take either side in any
float32 pass (whole-image ones included), and each such unit moves the coarse layers'
gradients by its whole contribution. `tie_free` redraws a few pixels until no unit is that
close, so a case's float32 gradient is determined by its arithmetic alone (docs/exactness.md).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import torch
import torch.nn.functional as F
from mlx.utils import tree_flatten

from gigamlx.backends.cuda_um.model import TorchGigaUNet, from_torch_layout
from gigamlx.core.geometry import padded_hw
from gigamlx.core.losses import DICE_SMOOTH
from gigamlx.core.normalise import InputNorm
from gigamlx.core.spec import scales

# a unit is a tie when |pre-activation| < TIE_MARGIN * (|bias| + sum |weight * input|): about
# a hundred float32 ulps of its terms, far above what a float32 sum of them errs by
TIE_MARGIN = 2.0**-17


def _pad(image: np.ndarray) -> np.ndarray:
    ph, pw = padded_hw(image.shape[:2])
    out = np.zeros((ph, pw, 3), image.dtype)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def loss_terms(z, g, loss: str, lib):
    """Loss from logits z and target g over real pixels, written once for torch and mlx."""
    p = lib.sigmoid(z)
    value = 0.0
    if "dice" in loss:
        value = value + 1 - (2 * (p * g).sum() + DICE_SMOOTH) / (p.sum() + g.sum() + DICE_SMOOTH)
    if "bce" in loss:
        bce = lib.maximum(z, z * 0) - z * g + lib.log1p(lib.exp(-lib.abs(z)))
        value = value + bce.sum() / g.size if lib is mx else value + bce.sum() / g.numel()
    return value


def float64_reference(
    flat_mlx: dict, image: np.ndarray, mask: np.ndarray, loss: str, norm: InputNorm | None = None
):
    """(loss, grads in MLX layout, probabilities) of a whole-image float64 pass.

    `norm` standardises the zero-padded image here, before the network (whose own
    standardisation stays the identity): an implementation independent of the models'.
    """
    model = TorchGigaUNet(dtype=torch.float64)
    model.load_mlx_layout(flat_mlx)
    h, w = image.shape[:2]
    padded = _pad(image).astype(np.float64) / 255.0
    if norm is not None:
        padded = norm.apply(padded)
    x = torch.from_numpy(padded).permute(2, 0, 1)[None]
    z = model.logits(x)[0, 0, :h, :w]
    g = torch.from_numpy((mask != 0).astype(np.float64))
    value = loss_terms(z, g, loss, torch)
    value.backward()
    grads = {n: from_torch_layout(model, n, p.grad.numpy()) for n, p in model.named_parameters()}
    return float(value.detach()), grads, torch.sigmoid(z).detach().numpy()


def mlx_whole_image(model, image: np.ndarray, mask: np.ndarray, loss: str):
    """(loss, flat float64 grads) of the plain whole-image float32 `mx.value_and_grad` step."""
    h, w = image.shape[:2]
    x = mx.array(_pad(image))[None].astype(mx.float32) / 255.0
    g = mx.array((mask != 0).astype(np.float32))

    def loss_fn(m):
        return loss_terms(m.logits(x)[0, :h, :w, 0], g, loss, mx)

    value, grads = nn.value_and_grad(model, loss_fn)(model)
    return float(value), {n: np.array(v, np.float64) for n, v in tree_flatten(grads)}


def random_case(hw: tuple[int, int], seed: int):
    """An image with structure (smooth blobs + noise) and a matching-ish mask."""
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    field = np.sin(yy / (7 + seed)) + np.cos(xx / (11 + seed)) + rng.normal(0, 0.3, (h, w))
    mask = (field > 0.4).astype(np.uint8)
    base = np.where(mask[..., None], [200, 120, 190], [240, 235, 240])
    image = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    return image, mask


def disc_case(hw: tuple[int, int], seed: int):
    """A uniformly random uint8 image and a mask of a few random discs (no relation between
    them: the coarse layers' gradients are then sums with heavy cancellation)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), np.uint8)
    for _ in range(4):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(h // 8 + 4, h // 3 + 8)
        mask |= ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
    return image, mask


def perturbed(flat: dict, scale: float, seed: int) -> dict:
    """Parameters (MLX layout) plus scale * N(0, 1) noise."""
    rng = np.random.default_rng(seed)
    return {n: (v + scale * rng.normal(0, 1, v.shape)).astype(np.float32) for n, v in flat.items()}


def _layer(module, h: torch.Tensor, absolute: bool = False) -> torch.Tensor:
    weight, bias = module.weight, module.bias
    if absolute:
        weight, bias = weight.abs(), bias.abs()
    if isinstance(module, torch.nn.ConvTranspose2d):
        return F.conv_transpose2d(h, weight, bias, module.stride)
    return F.conv2d(h, weight, bias, module.stride, module.padding)


@torch.no_grad()
def near_ties(flat: dict, image: np.ndarray, margin: float = TIE_MARGIN):
    """(scale, row, col) of every ReLU unit of the whole-image float64 pass whose
    pre-activation lies within `margin` of its absolute sum (see TIE_MARGIN)."""
    model = TorchGigaUNet(dtype=torch.float64)
    model.load_mlx_layout(flat)
    x = torch.from_numpy(_pad(image).astype(np.float64) / 255.0).permute(2, 0, 1)[None]
    saved, h, ties = {"input": x}, x, []
    layer_scales = scales(model.spec)
    for layer in model.spec[:-1]:  # the head has no ReLU
        module = getattr(model, layer.name)
        u = _layer(module, h)
        close = (u.abs() < margin * _layer(module, h.abs(), absolute=True)).any(dim=1)[0]
        ties += [(layer_scales[layer.name], i, j) for i, j in close.nonzero().tolist()]
        saved[layer.name] = h = F.relu(u)
        if layer.skip is not None:
            h = torch.cat([h, saved[layer.skip]], 1)
    return ties


def tie_free(flat: dict, image: np.ndarray, seed: int = 0, rounds: int = 40) -> np.ndarray:
    """A copy of `image` with pixels near each tie (near_ties) shifted by up to 16 levels (in
    later rounds drawn anew), round after round, until the whole-image pass has none.

    Raises:
        AssertionError: still ties after `rounds` rounds.
    """
    rng = np.random.default_rng(seed)
    image = image.copy()
    h, w = image.shape[:2]
    for round_index in range(rounds):
        ties = near_ties(flat, image)
        if not ties:
            return image
        grow = 1 + round_index // 4  # a tie that stays gets a wider patch
        for scale, i, j in ties:
            y0, x0 = min(max((i - grow) * scale, 0), h - 1), min(max((j - grow) * scale, 0), w - 1)
            y1 = max(min((i + 1 + grow) * scale, h), y0 + 1)
            x1 = max(min((j + 1 + grow) * scale, w), x0 + 1)
            patch = image[y0:y1, x0:x1]
            if round_index < 8:
                shift = rng.integers(-16, 17, patch.shape)
                image[y0:y1, x0:x1] = np.clip(patch + shift, 0, 255)
            else:  # shifts are clipped away on saturated pixels: draw the patch anew
                image[y0:y1, x0:x1] = rng.integers(0, 256, patch.shape)
    raise AssertionError(f"{len(ties)} ReLU ties left after {rounds} rounds")
