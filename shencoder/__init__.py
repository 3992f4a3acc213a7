"""Spherical-harmonics direction encoder: CUDA kernel with a pure-PyTorch reference."""

from .encoder import SHEncoder

__all__ = ["SHEncoder"]
