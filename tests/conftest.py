import sys
from pathlib import Path

import pytest

import gigamlx.backends.mlx  # noqa: F401  (first: loads a fast BLAS before mlx.core)

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py


@pytest.fixture
def model():
    import mlx.core as mx

    import gigamlx

    mx.random.seed(1234)
    return gigamlx.GigaUNet()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A fresh model's weights (seed 3, MLX layout) saved as a .safetensors file."""
    from safetensors.numpy import save_file

    from gigamlx.backends import get_backend

    backend = get_backend("mlx")
    path = tmp_path_factory.mktemp("weights") / "w.safetensors"
    save_file(backend.flat_params(backend.build_model(3)), str(path))
    return path
