import sys
from pathlib import Path

import mlx.core as mx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py


@pytest.fixture
def model():
    import gigamlx

    mx.random.seed(1234)
    return gigamlx.GigaUNet()
