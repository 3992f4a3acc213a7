"""The radiance field: a multi-resolution grid with a tiny MLP for density and albedo, plus a background network.

Sizes follow the original: 16 grid levels x 2 features (tiled by default), a 3-layer 64-wide MLP with 4 outputs
(density logit, albedo logits), a Gaussian density blob at the centre, normals by central finite differences,
and a 2-layer MLP on frequency-encoded ray directions for the background.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch.autograd import Function

from freqencoder import FreqEncoder
from gridencoder import GridEncoder
from nerf.cameras import safe_normalize

SHADINGS = ("albedo", "lambertian", "textureless", "normal")
NORMAL_EPS = 0.01


class _TruncExp(Function):
    """exp with a gradient clamped at exp(15), so large density logits cannot explode the update."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x.float())

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.float().clamp(max=15))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def mlp(dim_in: int, dim_out: int, dim_hidden: int, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(num_layers):
        layers.append(nn.Linear(dim_in if index == 0 else dim_hidden, dim_out if index == num_layers - 1 else dim_hidden))
        if index < num_layers - 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class NeRFNetwork(nn.Module):
    """Density, albedo, normals and shading at 3-D points; background colour per ray direction."""

    def __init__(self, bound: float = 0.75, grid_levels: int = 16, grid_resolution: int = 2048,
                 grid_type: str = "tiled", log2_hashmap_size: int = 16, blob_density: float = 5.0,
                 blob_radius: float = 0.2, bg_radius: float = 1.4, grid_levels_mask: int = 0,
                 backend: str = "auto") -> None:
        super().__init__()
        self.bound = bound
        self.blob_density = blob_density
        self.blob_radius = blob_radius
        self.encoder = GridEncoder(input_dim=3, num_levels=grid_levels, level_dim=2, base_resolution=16,
                                   log2_hashmap_size=log2_hashmap_size, desired_resolution=grid_resolution * bound,
                                   gridtype=grid_type, align_corners=False, interpolation="linear", backend=backend)
        self.sigma_net = mlp(self.encoder.output_dim, 4, 64, 3)
        self.grid_levels_mask = grid_levels_mask
        self.bg_encoder: FreqEncoder | None = None
        self.bg_net: nn.Sequential | None = None
        if bg_radius > 0:
            self.bg_encoder = FreqEncoder(input_dim=3, degree=6, backend=backend)
            self.bg_net = mlp(self.bg_encoder.output_dim, 3, 64, 2)

    # --- density and albedo -------------------------------------------------
    def _features(self, x: Tensor) -> Tensor:
        features = self.encoder(x, bound=self.bound)
        if self.grid_levels_mask > 0:
            keep = features.shape[-1] - self.grid_levels_mask * 2
            mask = torch.zeros(features.shape[-1], dtype=features.dtype, device=features.device)
            mask[:keep] = 1
            features = features * mask
        return features

    def blob(self, x: Tensor) -> Tensor:
        return self.blob_density * torch.exp(-(x * x).sum(-1) / (2 * self.blob_radius**2))

    def density(self, x: Tensor) -> dict[str, Tensor]:
        """sigma [N] and albedo [N, 3] at points x [N, 3] (world units)."""
        h = self.sigma_net(self._features(x))
        sigma = trunc_exp(h[..., 0] + self.blob(x))
        albedo = torch.sigmoid(h[..., 1:])
        return {"sigma": sigma, "albedo": albedo}

    def normal(self, x: Tensor) -> Tensor:
        """Outward unit normals -grad(sigma)/|grad(sigma)| by central differences (one batched field call)."""
        offsets = torch.eye(3, device=x.device, dtype=x.dtype) * NORMAL_EPS
        offsets = torch.cat([offsets, -offsets])  # +x, +y, +z, -x, -y, -z
        shifted = (x[None] + offsets[:, None]).clamp(-self.bound, self.bound).reshape(-1, 3)
        sigma = self.density(shifted)["sigma"].reshape(6, -1)
        gradient = (sigma[:3] - sigma[3:]).T / (2 * NORMAL_EPS)
        return torch.nan_to_num(safe_normalize(-gradient))

    def forward(self, x: Tensor, d: Tensor | None = None, light_d: Tensor | None = None, ratio: float = 1.0,
                shading: str = "albedo", need_normals: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """sigma [N], colour [N, 3] and (if needed or used by the shading) normals [N, 3].

        The view direction d is accepted for interface symmetry and ignored: colour is not view-dependent.
        """
        if shading not in SHADINGS:
            raise ValueError(f"unknown shading {shading!r}")
        out = self.density(x)
        sigma, albedo = out["sigma"], out["albedo"]
        normal = self.normal(x) if (need_normals or shading != "albedo") else None
        if shading == "albedo":
            return sigma, albedo, normal
        if shading == "normal":
            return sigma, (normal + 1) / 2, normal
        assert light_d is not None, "lambertian and textureless shading need a light direction"
        lambert = ratio + (1 - ratio) * (normal @ light_d.to(normal.dtype)).clamp(min=0)
        if shading == "textureless":
            return sigma, lambert[:, None].expand(-1, 3).float(), normal
        return sigma, (albedo * lambert[:, None]).float(), normal

    # --- background ----------------------------------------------------------
    def background(self, d: Tensor) -> Tensor:
        """Background colour [N, 3] for ray directions d [N, 3] (training only, see the renderer)."""
        assert self.bg_encoder is not None and self.bg_net is not None
        return torch.sigmoid(self.bg_net(self.bg_encoder(d)))

    def param_groups(self, lr: float) -> list[dict]:
        """The original's groups: grid tables at 10x the base learning rate, MLPs at the base rate."""
        groups = [{"params": list(self.encoder.parameters()), "lr": lr * 10},
                  {"params": list(self.sigma_net.parameters()), "lr": lr}]
        if self.bg_net is not None:
            groups.append({"params": list(self.bg_net.parameters()), "lr": lr})
        return groups
