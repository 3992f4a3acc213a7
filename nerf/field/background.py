"""The background network: colour per ray direction, so the object need not explain the backdrop."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from freqencoder import FreqEncoder
from nerf.field.mlp import mlp


class Background(nn.Module):
    """A 2-layer 64-wide MLP on frequency-encoded (degree 6) ray directions, sigmoid colour."""

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        self.encoder = FreqEncoder(input_dim=3, degree=6, backend=backend)
        self.mlp = mlp(self.encoder.output_dim, 3, 64, 2)

    def forward(self, d: Tensor) -> Tensor:
        """Colour [N, 3] for unit ray directions d [N, 3]."""
        return torch.sigmoid(self.mlp(self.encoder(d)))
