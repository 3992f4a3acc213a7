"""The radiance field the renderer marches through: geometry (density, albedo, normals), shading and background.

`Field` is all the renderer relies on, so analytic stand-ins (tests, benchmarks) can replace the learned field;
`RadianceField` composes the learned parts.
"""

from __future__ import annotations

from typing import Protocol

import torch.nn as nn
from torch import Tensor

from gridencoder import GridEncoder
from nerf.field.background import Background
from nerf.field.geometry import DensityGeometry
from nerf.field.shading import SHADERS, SHADINGS, needs_normals

__all__ = ["Field", "RadianceField", "SHADINGS"]


class Field(Protocol):
    """What the renderer (and the trainer's coarse-to-fine schedule) needs from a field."""

    grid_levels_mask: int

    def __call__(self, x: Tensor, d: Tensor, light_d: Tensor | None, ratio: float, shading: str,
                 need_normals: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """sigma [N], colour [N, 3] and normals [N, 3] (None unless asked for or used by the shading)."""
        ...

    def density(self, x: Tensor) -> dict[str, Tensor]:
        """{"sigma": [N], "albedo": [N, 3]} at points x [N, 3]."""
        ...

    def normal(self, x: Tensor) -> Tensor:
        """Outward unit normals [N, 3] at points x [N, 3]."""
        ...

    def background(self, d: Tensor) -> Tensor | None:
        """Learned background colour [N, 3] for ray directions d [N, 3]; None: the renderer's fixed colour."""
        ...


class RadianceField(nn.Module):
    """A density geometry, shaded by name, with an optional learned background; satisfies `Field`."""

    def __init__(self, geometry: DensityGeometry, background: Background | None = None) -> None:
        super().__init__()
        self.geometry = geometry
        self.background_net = background

    @property
    def encoder(self) -> GridEncoder:
        """The geometry's grid encoder (its `backend_name` is logged by main.py)."""
        return self.geometry.encoder

    @property
    def grid_levels_mask(self) -> int:
        return self.geometry.grid_levels_mask

    @grid_levels_mask.setter
    def grid_levels_mask(self, value: int) -> None:
        self.geometry.grid_levels_mask = value

    def forward(self, x: Tensor, d: Tensor | None = None, light_d: Tensor | None = None, ratio: float = 1.0,
                shading: str = "albedo", need_normals: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """sigma [N], colour [N, 3] and (if needed or used by the shading) normals [N, 3].

        The view direction d is accepted for the protocol and ignored: colour is not view-dependent.
        """
        if shading not in SHADERS:
            raise ValueError(f"unknown shading {shading!r}; choose one of {SHADINGS}")
        sigma, albedo, normal = self.geometry.sample(x, need_normals or needs_normals(shading))
        return sigma, SHADERS[shading](albedo, normal, light_d, ratio), normal

    def density(self, x: Tensor) -> dict[str, Tensor]:
        return self.geometry.density(x)

    def normal(self, x: Tensor) -> Tensor:
        return self.geometry.normal(x)

    @property
    def predicts_normals(self) -> bool:
        """Whether the normals come from a learned head (--normal_type pred) that a loss ties to the geometry."""
        return self.geometry.normal_head is not None

    def gradient_normal(self, x: Tensor) -> Tensor:
        """The density-gradient normals at x (the target of the predicted normals)."""
        return self.geometry.gradient_normal(x)

    def background(self, d: Tensor) -> Tensor | None:
        return None if self.background_net is None else self.background_net(d)

    def param_groups(self, lr: float) -> list[dict]:
        """The original's groups: grid tables at 10x the base learning rate, MLPs at the base rate."""
        groups = [{"params": list(self.geometry.encoder.parameters()), "lr": lr * 10},
                  {"params": list(self.geometry.mlp.parameters()), "lr": lr}]
        if self.geometry.normal_head is not None:
            groups[1]["params"] += list(self.geometry.normal_head.parameters())
        if self.background_net is not None:
            groups.append({"params": list(self.background_net.parameters()), "lr": lr})
        return groups
