"""Builds the gigamlx_fused MLX extension with CMake against the installed mlx (no isolation)."""

from mlx import extension
from setuptools import setup

setup(
    name="gigamlx-fused",
    version="0.8.0",
    description="Fused full-resolution tail of GigaUNet for MLX on the CPU.",
    ext_modules=[extension.CMakeExtension("gigamlx_fused", sourcedir=".")],
    cmdclass={"build_ext": extension.CMakeBuild},
    zip_safe=False,
    python_requires=">=3.10",
)
