"""GigaUNet-4492 in PyTorch (NCHW), from the same layer table as the MLX model.

Parameters are exchanged in the MLX layout, (C_out, kH, kW, C_in) for both conv kinds, so a
checkpoint written by either backend loads in the other.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gigamlx.core.geometry import Box, inside_at_scale
from gigamlx.core.normalise import InputNorm
from gigamlx.core.spec import GIGAUNET_4492, Layer, check_spec, scales


class TorchGigaUNet(nn.Module):
    """(N, 3, H, W) in [0, 1] -> (N, 1, H, W) logits via `logits`, probabilities via forward."""

    backend_name = "cuda-um"

    def __init__(self, spec: tuple[Layer, ...] = GIGAUNET_4492, dtype=torch.float32):
        super().__init__()
        check_spec(spec)
        self.spec = spec
        self._scales = scales(spec)
        for layer in spec:
            kind = nn.Conv2d if layer.kind == "conv" else nn.ConvTranspose2d
            module = kind(layer.in_ch, layer.out_ch, layer.kernel, layer.stride, layer.pad)
            self.add_module(layer.name, module.to(dtype))
        self.input_norm = InputNorm()  # a plain attribute: set from the run, never trained

    def logits(self, x: torch.Tensor, in_box: Box | None = None, padded_hw=None) -> torch.Tensor:
        if not self.input_norm.is_identity:  # (x - mean) / std, zero outside the image
            mean = torch.tensor(self.input_norm.mean, dtype=x.dtype, device=x.device)
            std = torch.tensor(self.input_norm.std, dtype=x.dtype, device=x.device)
            x = (x - mean[:, None, None]) / std[:, None, None]
            if in_box is not None:
                x = _zero_outside(x, in_box, padded_hw, 1)
        saved = {"input": x}
        h = x
        for index, layer in enumerate(self.spec):
            h = getattr(self, layer.name)(h)
            if index == len(self.spec) - 1:
                return h
            h = F.relu(h)
            if in_box is not None:
                h = _zero_outside(h, in_box, padded_hw, self._scales[layer.name])
            saved[layer.name] = h
            if layer.skip is not None:
                h = torch.cat([h, saved[layer.skip]], dim=1)
        raise AssertionError("empty spec")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))

    def load_mlx_layout(self, flat: dict[str, np.ndarray]) -> None:
        """Copy parameters given in the MLX layout ("down1.weight": (C_out, kH, kW, C_in))."""
        with torch.no_grad():
            for name, value in flat.items():
                self.get_parameter(name).copy_(torch.from_numpy(to_torch_layout(self, name, value)))

    def mlx_layout(self) -> dict[str, np.ndarray]:
        """Parameters in the MLX layout, as numpy."""
        return {
            name: from_torch_layout(self, name, p.detach().cpu().numpy())
            for name, p in self.named_parameters()
        }


def _is_transpose(model: TorchGigaUNet, name: str) -> bool:
    return isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.ConvTranspose2d)


def to_torch_layout(model: TorchGigaUNet, name: str, value: np.ndarray) -> np.ndarray:
    """MLX layout (C_out, kH, kW, C_in) to torch's.

    Torch convs want (C_out, C_in, kH, kW); torch conv-transposes want (C_in, C_out, kH, kW).
    """
    if value.ndim != 4:
        return np.ascontiguousarray(value)
    axes = (3, 0, 1, 2) if _is_transpose(model, name) else (0, 3, 1, 2)
    return np.ascontiguousarray(value.transpose(axes))


def from_torch_layout(model: TorchGigaUNet, name: str, value: np.ndarray) -> np.ndarray:
    """Inverse of `to_torch_layout`."""
    if value.ndim != 4:
        return value
    axes = (1, 2, 3, 0) if _is_transpose(model, name) else (0, 2, 3, 1)
    return np.ascontiguousarray(value.transpose(axes))


def _zero_outside(h: torch.Tensor, in_box: Box, padded_hw, scale: int) -> torch.Tensor:
    """Zero positions of an (N, C, h, w) window tensor that lie outside the padded image."""
    keep = inside_at_scale(in_box, padded_hw, scale)
    if keep is None:
        return h
    inside = torch.zeros(h.shape[2:], dtype=torch.bool, device=h.device)
    inside[keep.y0 : keep.y1, keep.x0 : keep.x1] = True
    return h * inside
