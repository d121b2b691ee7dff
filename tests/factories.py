"""What many test modules build alike: a small, fast training configuration.

Reached through pytest's `pythonpath` (pyproject.toml); the synthetic slides are fixtures in
conftest.py.
"""

from __future__ import annotations

import os

from gigamlx.runs.config import TrainConfig


def small_config(data, out, steps: int, **extra) -> TrainConfig:
    """A short run on `data` (one store or several): 256x320 regions in 128 px tiles within
    300 MB, lr 0.01; no validation and a constant learning rate unless `extra` says otherwise.
    """
    stores = (data,) if isinstance(data, str | os.PathLike) else tuple(data)
    base = dict(
        data=tuple(str(s) for s in stores),
        out=str(out),
        region="256x320",
        steps=steps,
        memory_budget="300MB",
        lr=0.01,
        tile=128,
        val_fraction=0.0,
        warmup=0.0,
        lr_schedule="constant",
    )
    return TrainConfig(**(base | extra))
