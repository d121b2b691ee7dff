"""Adam on torch tensors with MLX's arithmetic and state names, so both backends step alike.

mlx.optimizers.Adam (as the mlx backend builds it) does not bias-correct, unlike
torch.optim.Adam; this one follows MLX line for line, in float32, and keeps its state as MLX
flattens it ("step", "learning_rate", "<param>.m", "<param>.v") so checkpoints swap engines.
"""

from __future__ import annotations

import numpy as np
import torch


class MLXAdam:
    """Adam as mlx.optimizers.Adam computes it.

    Args:
        model: the module whose parameters it updates (all of them are trainable).
        lr: learning rate.
        betas: decay of the first and second moment averages.
        eps: added to sqrt(v) in the denominator.
        bias_correction: MLX's flag (off by default, as in the mlx backend).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        bias_correction: bool = False,
    ):
        self.model = model
        self.params = dict(model.named_parameters())
        self.betas, self.eps, self.bias_correction = betas, eps, bias_correction
        self.step = 0
        self.learning_rate = np.float32(lr)  # MLX keeps it as a float32 scalar array
        self.m = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.v = {name: torch.zeros_like(p) for name, p in self.params.items()}

    @torch.no_grad()
    def update(self, grads: dict[str, torch.Tensor]) -> None:
        """One step with float32 gradients in the parameters' own layout."""
        self.step += 1
        b1, b2 = self.betas
        lr = float(self.learning_rate)
        for name, g in grads.items():
            m = self.m[name] = b1 * self.m[name] + (1 - b1) * g
            v = self.v[name] = b2 * self.v[name] + (1 - b2) * torch.square(g)
            param = self.params[name]
            if self.bias_correction:
                c1 = lr / (1 - b1**self.step)
                c2 = (1 - b2**self.step) ** -0.5
                param.sub_(c1 * m / (torch.sqrt(v) * c2 + self.eps))
            else:
                param.sub_(lr * m / (torch.sqrt(v) + self.eps))

    def state(self) -> dict[str, np.ndarray | torch.Tensor]:
        """MLX's flattened state; m and v in the parameters' layout, on their device."""
        flat: dict[str, np.ndarray | torch.Tensor] = {
            "step": np.array(self.step, np.uint64),
            "learning_rate": np.array(self.learning_rate, np.float32),
        }
        for name in self.params:
            flat[f"{name}.m"], flat[f"{name}.v"] = self.m[name], self.v[name]
        return flat

    def load_state(self, flat: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Inverse of `state` (m and v already in the parameters' layout, any device)."""
        # scalars come back from safetensors as shape (1,): take the one element
        self.step = int(np.asarray(flat["step"]).item())
        self.learning_rate = np.float32(np.asarray(flat["learning_rate"]).item())
        for name, p in self.params.items():
            for moments, suffix in ((self.m, "m"), (self.v, "v")):
                value = torch.as_tensor(np.asarray(flat[f"{name}.{suffix}"]))
                moments[name] = value.to(device=p.device, dtype=p.dtype)
