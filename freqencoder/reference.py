"""Frequency (positional) encoding in plain PyTorch (CPU path and oracle of the CUDA kernel)."""

from __future__ import annotations

import torch
from torch import Tensor


def freq_encode(inputs: Tensor, degree: int) -> Tensor:
    """[x, sin(2^0 x), cos(2^0 x), ..., sin(2^(K-1) x), cos(2^(K-1) x)] for `inputs` [B, D], blocks D wide."""
    if degree < 0:
        raise ValueError(f"frequency degree must be >= 0, got {degree}")
    if inputs.dim() != 2:
        raise ValueError("freq_encode expects inputs [B, D]")
    batch = inputs.shape[0]
    freqs = torch.pow(2.0, torch.arange(degree, dtype=inputs.dtype, device=inputs.device))
    scaled = inputs[:, None, :] * freqs[:, None]  # [B, K, D]
    waves = torch.stack([torch.sin(scaled), torch.cos(scaled)], dim=2)  # [B, K, 2, D]
    return torch.cat([inputs, waves.reshape(batch, -1)], dim=1)
