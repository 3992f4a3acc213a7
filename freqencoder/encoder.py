"""`FreqEncoder`: sin/cos positional encoding, routed to the CUDA kernel or the reference."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from . import cuda
from .cuda_build import resolve_backend, use_compiled
from .reference import freq_encode

PACKAGE_DIR = Path(__file__).resolve().parent


class FreqEncoder(nn.Module):
    """Identity plus sin/cos at frequencies 2^0 .. 2^(degree-1): `input_dim * (1 + 2 * degree)` features."""

    def __init__(self, input_dim: int = 3, degree: int = 4, backend: str = "auto") -> None:
        super().__init__()
        if input_dim < 1 or degree < 0:
            raise ValueError("FreqEncoder needs input_dim >= 1 and degree >= 0")
        self.input_dim = input_dim
        self.degree = degree
        self.output_dim = input_dim * (1 + 2 * degree)
        self._requested = backend
        self._ext = resolve_backend(backend, "freqencoder", PACKAGE_DIR)
        self.backend_name = "cuda" if self._ext is not None else "torch"

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, degree={self.degree}, backend={self.backend_name}"

    def forward(self, inputs: Tensor) -> Tensor:
        """Encode `inputs` [..., D] -> [..., D * (1 + 2 * degree)] (fp32 unless the inputs are fp64)."""
        lead = inputs.shape[:-1]
        x = inputs.reshape(-1, self.input_dim)
        if x.dtype != torch.float64:
            x = x.float()
        encode = cuda.freq_encode if use_compiled(self._ext, self._requested, x) else freq_encode
        return encode(x, self.degree).reshape(*lead, self.output_dim)
