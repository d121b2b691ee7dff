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
