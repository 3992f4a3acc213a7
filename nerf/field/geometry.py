"""The density geometry: a multi-resolution grid and a tiny MLP give density (and albedo) at 3-D points.

Sizes follow the original: 16 grid levels x 2 features (tiled by default), a 3-layer 64-wide MLP with 4 outputs
(density logit, albedo logits) and a Gaussian density blob at the centre. The albedo comes with the geometry
because one MLP produces both. Normals (`normal_type`) are either central finite differences of the density (six
more field evaluations per point) or predicted by a small head on the same grid features (no further evaluation;
Ref-NeRF's predicted normals, tied to the density-gradient normals by a loss in the renderer).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch.autograd import Function

from gridencoder import GridEncoder
from nerf.cameras import safe_normalize
from nerf.field.mlp import mlp

NORMAL_TYPES = ("finite_difference", "pred")
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


def central_difference_normal(sigma_taps: Tensor, eps: float = NORMAL_EPS) -> Tensor:
    """Outward unit normals -grad(sigma)/|grad(sigma)| [N, 3] from the densities [6, N] at +x, +y, +z, -x, -y, -z
    (steps of `eps`); a zero gradient gives a zero normal."""
    gradient = (sigma_taps[:3] - sigma_taps[3:]).T / (2 * eps)
    return torch.nan_to_num(safe_normalize(-gradient))


def stencil_points(x: Tensor, bound: float, eps: float = NORMAL_EPS) -> Tensor:
    """x [N, 3] and its six neighbours at +-eps along x, y, z (clamped to the scene cube): [7, N, 3]."""
    shifts = torch.eye(3, device=x.device, dtype=x.dtype) * eps
    neighbours = (x[None] + torch.cat([shifts, -shifts])[:, None]).clamp(-bound, bound)
    return torch.cat([x[None], neighbours])


class DensityGeometry(nn.Module):
    """Density sigma and albedo at points (world units, inside the cube of half-side `bound`) and their normals."""

    def __init__(self, bound: float = 0.75, grid_levels: int = 16, grid_resolution: int = 2048,
                 grid_type: str = "tiled", log2_hashmap_size: int = 16, blob_density: float = 5.0,
                 blob_radius: float = 0.2, grid_levels_mask: int = 0, normal_type: str = "finite_difference",
                 backend: str = "auto") -> None:
        super().__init__()
        if normal_type not in NORMAL_TYPES:
            raise ValueError(f"unknown normal_type {normal_type!r}; choose one of {NORMAL_TYPES}")
        self.bound = bound
        self.blob_density = blob_density
        self.blob_radius = blob_radius
        self.normal_type = normal_type
        self.grid_levels_mask = grid_levels_mask  # the finest levels zeroed (coarse-to-fine start of a run)
        self.encoder = GridEncoder(input_dim=3, num_levels=grid_levels, level_dim=2, base_resolution=16,
                                   log2_hashmap_size=log2_hashmap_size, desired_resolution=grid_resolution * bound,
                                   gridtype=grid_type, align_corners=False, interpolation="linear", backend=backend)
        self.mlp = mlp(self.encoder.output_dim, 4, 64, 3)
        # Predicted normals read the features the density already computed: one hidden layer, as threestudio's.
        self.normal_head = mlp(self.encoder.output_dim, 3, 64, 2) if normal_type == "pred" else None

    def features(self, x: Tensor) -> Tensor:
        """Grid features [N, levels * 2] with the `grid_levels_mask` finest levels zeroed."""
        return self._masked(self.encoder(x, bound=self.bound))

    def _masked(self, features: Tensor) -> Tensor:
        if self.grid_levels_mask > 0:
            keep = features.shape[-1] - self.grid_levels_mask * 2
            mask = torch.zeros(features.shape[-1], dtype=features.dtype, device=features.device)
            mask[:keep] = 1
            features = features * mask
        return features

    def blob(self, x: Tensor) -> Tensor:
        """The Gaussian density logit bias that starts every run with an object at the centre."""
        return self.blob_density * torch.exp(-(x * x).sum(-1) / (2 * self.blob_radius**2))

    def _density_of(self, features: Tensor, x: Tensor) -> dict[str, Tensor]:
        h = self.mlp(features)
        return {"sigma": self._sigma(h, x), "albedo": torch.sigmoid(h[..., 1:])}

    def _sigma(self, h: Tensor, x: Tensor) -> Tensor:
        return trunc_exp(h[..., 0] + self.blob(x))

    def density(self, x: Tensor) -> dict[str, Tensor]:
        """sigma [N] and albedo [N, 3] at points x [N, 3]."""
        return self._density_of(self.features(x), x)

    def sample(self, x: Tensor, need_normal: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """sigma [N], albedo [N, 3] and (if `need_normal`) unit normals [N, 3] at x from one grid evaluation (of
        the point and its six neighbours for finite-difference normals)."""
        if need_normal and self.normal_head is None:
            sigma, albedo = self._stencil_density(x)
            return sigma[0], albedo, central_difference_normal(sigma[1:])
        features = self.features(x)
        out = self._density_of(features, x)
        if not need_normal:
            return out["sigma"], out["albedo"], None
        return out["sigma"], out["albedo"], self._predicted_normal(features)

    def _stencil_density(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """sigma [7, N] at x and its six central-difference neighbours, and albedo [N, 3] at x alone, from one grid
        call (fused on CUDA) and one MLP call."""
        h = self.mlp(self._masked(self.encoder.stencil(x, self.bound, NORMAL_EPS)))
        return self._sigma(h, stencil_points(x, self.bound)), torch.sigmoid(h[0, :, 1:])

    def _predicted_normal(self, features: Tensor) -> Tensor:
        return safe_normalize(self.normal_head(features).float())

    def gradient_normal(self, x: Tensor) -> Tensor:
        """The density-gradient normals [N, 3] at x by central finite differences, whatever `normal_type` is."""
        return central_difference_normal(self._stencil_density(x)[0][1:])

    def normal(self, x: Tensor) -> Tensor:
        """Outward unit normals [N, 3] at x, by the method `normal_type` names."""
        if self.normal_head is not None:
            return self._predicted_normal(self.features(x))
        return self.gradient_normal(x)
