"""Whole-image references for the exactness tests: torch float64, and MLX float32.

The float64 reference is an independent implementation (PyTorch) of the same spec, run on
the whole zero-padded image with autograd; it is what "exact" is measured against.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import torch
from mlx.utils import tree_flatten

from gigamlx.backends.cuda_um.model import TorchGigaUNet, from_torch_layout
from gigamlx.core.geometry import padded_hw
from gigamlx.core.losses import DICE_SMOOTH
from gigamlx.core.normalise import InputNorm


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
