"""The public entry points: exact tiled value-and-grad and tiled prediction for any backend."""

from __future__ import annotations

from gigamlx.backends import backend_for
from gigamlx.tiling.scheduler import tiled_predict, tiled_step


def tiled_value_and_grad(model, image, mask, loss="dice", tile=None, budget_bytes=None):
    """Exact whole-image loss and gradients of `model`, computed one tile at a time.

    Args:
        model: a gigamlx model, e.g. `gigamlx.GigaUNet()`.
        image: (H, W, 3) uint8 array-like (numpy or zarr; read tile by tile).
        mask: (H, W) array-like, non-zero = tissue.
        loss: "dice", "bce" or "dice+bce".
        tile: owned tile side in px (multiple of 64); default from `budget_bytes`, else
            runs/config's DEFAULT_TILE_PX.
        budget_bytes: engine peak memory the step must stay under.

    Returns:
        (loss, grads): a float, and gradients shaped like `model.trainable_parameters()`.
    """
    backend = backend_for(model)
    result = tiled_step(backend, model, image, mask, loss, tile, budget_bytes)
    return result.loss, backend.to_tree(model, result.grads)


def predict(model, image, tile=None, budget_bytes=None, out=None):
    """Tissue probabilities (H, W) of an (H, W, 3) uint8 image, written into `out` if given."""
    return tiled_predict(backend_for(model), model, image, tile, budget_bytes, out)
