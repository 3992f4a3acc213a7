"""Shading models: colour from albedo, surface normal and light.

Every model has the signature ``(albedo [N, 3], normal [N, 3] | None, light_d [3] | None, ratio) -> rgb [N, 3]``
so the field can pick one by name; ``ratio`` is the ambient share of the Lambertian term.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

Shading = Callable[[Tensor, Tensor | None, Tensor | None, float], Tensor]


def albedo(albedo: Tensor, normal: Tensor | None, light_d: Tensor | None, ratio: float) -> Tensor:
    """The unlit base colour (the input view and the early synthetic views)."""
    return albedo


def _lambert(normal: Tensor | None, light_d: Tensor | None, ratio: float) -> Tensor:
    """ratio + (1 - ratio) * max(0, n . l) per point [N]; the light is one direction [3] or one per point [N, 3]."""
    assert normal is not None and light_d is not None, "lambertian and textureless shading need normals and a light"
    light = light_d.to(normal.dtype)
    cosine = normal @ light if light.dim() == 1 else (normal * light).sum(-1)
    return ratio + (1 - ratio) * cosine.clamp(min=0)


def lambertian(albedo: Tensor, normal: Tensor | None, light_d: Tensor | None, ratio: float) -> Tensor:
    """Diffuse lighting of the albedo: shows the geometry to the prior while keeping the texture."""
    return (albedo * _lambert(normal, light_d, ratio)[:, None]).float()


def textureless(albedo: Tensor | None, normal: Tensor | None, light_d: Tensor | None, ratio: float) -> Tensor:
    """Diffuse lighting of white: the geometry alone, so texture cannot fake shape (the albedo is not read)."""
    return _lambert(normal, light_d, ratio)[:, None].expand(-1, 3).float()


SHADERS: dict[str, Shading] = {"albedo": albedo, "lambertian": lambertian, "textureless": textureless}
SHADINGS = tuple(SHADERS)


def needs_normals(shading: str) -> bool:
    """Whether a shading model reads the normal (all but albedo)."""
    return shading != "albedo"
