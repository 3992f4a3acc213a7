"""Multi-resolution grid encoder (instant-NGP): CUDA kernels with a pure-PyTorch reference."""

from .grid import GridEncoder

__all__ = ["GridEncoder"]
