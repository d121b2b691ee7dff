"""CUDA sources for the cuda-um backend: the managed-memory allocator and migration hints."""
