"""How a prior's gradient enters training: as an ordinary loss term.

A prior hands back a gradient g for some differentiable quantity z (SDS: the VAE latents; the oracle: the image).
The surrogate loss 0.5 * ||z - stopgrad(z - g)||^2 has exactly g as its gradient with respect to z, so the loss
weight multiplies it and the AMP GradScaler scales and unscales it like every other term (the original injected
g with an unscaled ``backward`` and, under fp16, effectively divided it by the loss scale).
"""

from __future__ import annotations

import torch


def surrogate_loss(latents: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 * ||z - stopgrad(z - g)||^2: a scalar whose gradient with respect to z is exactly g."""
    latents = latents.float()
    target = (latents - grad.float()).detach()
    return 0.5 * ((latents - target) ** 2).sum()
