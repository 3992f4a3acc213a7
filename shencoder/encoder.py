"""`SHEncoder`: spherical-harmonics encoding of directions, routed to the CUDA kernel or the reference."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from . import cuda
from .cuda_build import resolve_backend, use_compiled
from .reference import MAX_DEGREE, sh_encode

PACKAGE_DIR = Path(__file__).resolve().parent


class SHEncoder(nn.Module):
    """Real spherical harmonics up to `degree` (1..8) of unit directions: `degree**2` features."""

    def __init__(self, input_dim: int = 3, degree: int = 4, backend: str = "auto") -> None:
        super().__init__()
        if input_dim != 3:
            raise ValueError("SHEncoder encodes 3-D directions")
        if not 1 <= degree <= MAX_DEGREE:
            raise ValueError(f"SH degree must be in 1..{MAX_DEGREE}, got {degree}")
        self.input_dim = input_dim
        self.degree = degree
        self.output_dim = degree**2
        self._requested = backend
        self._ext = resolve_backend(backend, "shencoder", PACKAGE_DIR)
        self.backend_name = "cuda" if self._ext is not None else "torch"

    def extra_repr(self) -> str:
        return f"degree={self.degree}, backend={self.backend_name}"

    def forward(self, inputs: Tensor, size: float = 1.0) -> Tensor:
        """Encode `inputs / size` ([..., 3], expected unit length) -> [..., degree**2]."""
        lead = inputs.shape[:-1]
        x = (inputs / size).reshape(-1, 3)
        if x.dtype != torch.float64:
            x = x.float()
        encode = cuda.sh_encode if use_compiled(self._ext, self._requested, x) else sh_encode
        return encode(x, self.degree).reshape(*lead, self.output_dim)
