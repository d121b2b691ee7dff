from pathlib import Path

import pytest

import gigamlx.backends.mlx  # noqa: F401  (first: loads a fast BLAS before mlx.core)


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


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory):
    """make(hw, seed) -> a synthetic slide store, made once per session for each (hw, seed).
    Shared between modules: tests read these stores and never write into them."""
    from gigamlx.synth.slide import synth_slide

    made: dict[tuple, Path] = {}

    def make(hw: tuple[int, int] = (400, 600), seed: int = 1, **options) -> Path:
        key = (tuple(hw), seed, tuple(sorted(options.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp(f"synth_{hw[0]}x{hw[1]}_{seed}")
            made[key] = synth_slide(folder / "s.zarr", tuple(hw), seed=seed, **options)
        return made[key]

    return make


@pytest.fixture(scope="session")
def slide(synth_store) -> str:
    """The training tests' slide: 400x600 px, seed 1 (a module may define its own `slide`)."""
    return str(synth_store((400, 600), seed=1))
