"""Frequency (positional) encoder: CUDA kernel with a pure-PyTorch reference."""

from .encoder import FreqEncoder

__all__ = ["FreqEncoder"]
