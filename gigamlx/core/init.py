"""Initial weights drawn once, engine-neutrally: the same seed is the same model on every
backend (numpy's PCG64 from the seed, MLX's own initialisation distributions)."""

from __future__ import annotations

import math

import numpy as np

from gigamlx.core.spec import GIGAUNET_4492, Layer


def initial_weights(seed: int, spec: tuple[Layer, ...] = GIGAUNET_4492) -> dict[str, np.ndarray]:
    """Fresh float32 parameters by dotted name, in the MLX layout.

    Weights (C_out, k, k, C_in) uniform in +-sqrt(1 / (C_in k^2)) for both conv kinds (what
    mlx.nn.Conv2d and ConvTranspose2d draw), biases zero; drawn layer by layer in spec order.

    Raises:
        ValueError: a seed numpy cannot take (negative).
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for layer in spec:
        scale = math.sqrt(1.0 / (layer.in_ch * layer.kernel**2))
        shape = (layer.out_ch, layer.kernel, layer.kernel, layer.in_ch)
        weights[f"{layer.name}.weight"] = rng.uniform(-scale, scale, shape).astype(np.float32)
        weights[f"{layer.name}.bias"] = np.zeros(layer.out_ch, np.float32)
    return weights
