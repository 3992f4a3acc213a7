"""Ground-truth renders of a signed-distance scene by sphere tracing, through the project's own cameras.

Rays come from `nerf.cameras` (the same pixel grid, focal length and handedness as the NeRF renders), so a
ground-truth image and a NeRF render of the same `CameraBatch` are pixel-aligned by construction. Images are
straight (not premultiplied) RGBA with the hit coverage as alpha; supersampling gives anti-aliased edges.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from nerf.cameras import CameraBatch
from nerf.scenes.procedural import Scene

MAX_STEPS = 192
HIT_EPS = 1e-3  # 1/15 of a pixel of a 128^2 view at the orbit radius; 2e-4 took up to twice the steps
NORMAL_EPS = 1e-3
SCENE_RADIUS = 0.65 * math.sqrt(3)  # a sphere around every scene part
CHUNK = 1 << 16
COMPACT_EVERY = 8


def _enter_exit(rays_o: Tensor, rays_d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distances where unit rays enter and leave the scene's bounding sphere, and whether they meet it."""
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - SCENE_RADIUS**2
    disc = b * b - c
    root = disc.clamp(min=0).sqrt()
    return (-b - root).clamp(min=0), -b + root, disc > 0


@torch.no_grad()
def trace(scene: Scene, rays_o: Tensor, rays_d: Tensor) -> tuple[Tensor, Tensor]:
    """Sphere tracing of unit rays [N, 3]: hit mask [N] and hit points [N, 3].

    Every COMPACT_EVERY steps the rays that hit or left the scene are dropped, so the cost follows the hard rays,
    with one host synchronisation per interval (on a GPU, per-step compaction would be launch-bound). Rays that
    finish within an interval stay put: a hit ray's distance is below HIT_EPS and it takes no further step.
    """
    t, far, meets = _enter_exit(rays_o, rays_d)
    hit = torch.zeros_like(meets)
    active = meets.nonzero().squeeze(1)
    for step in range(MAX_STEPS):
        if step % COMPACT_EVERY == 0:
            active = active[~hit[active] & (t[active] < far[active])]
            if active.numel() == 0:
                break
        distance = scene.sdf(rays_o[active] + t[active, None] * rays_d[active])
        done = distance < HIT_EPS
        hit[active] |= done
        t[active] += torch.where(done, torch.zeros_like(distance), distance)
    return hit, rays_o + t[:, None] * rays_d


@torch.no_grad()
def normals(scene: Scene, points: Tensor) -> Tensor:
    """Outward unit normals from central differences of the signed distance."""
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * NORMAL_EPS
    shifted = torch.cat([points[None] + offsets[:, None], points[None] - offsets[:, None]]).reshape(-1, 3)
    d = scene.sdf(shifted).reshape(2, 3, -1)
    return F.normalize((d[0] - d[1]).T, dim=-1)


@torch.no_grad()
def shade_rays(scene: Scene, rays_o: Tensor, rays_d: Tensor) -> tuple[Tensor, Tensor]:
    """Colour [N, 3] (0 where nothing is hit) and coverage [N] of unit rays, in chunks."""
    colours, alphas = [], []
    for start in range(0, len(rays_o), CHUNK):
        o, d = rays_o[start:start + CHUNK], rays_d[start:start + CHUNK]
        hit, points = trace(scene, o, d)
        colour = torch.zeros_like(o)
        if hit.any():
            colour[hit] = scene.radiance(points[hit], normals(scene, points[hit])).clamp(0, 1)
        colours.append(colour)
        alphas.append(hit.to(o.dtype))
    return torch.cat(colours), torch.cat(alphas)


@torch.no_grad()
def render_rgba(scene: Scene, camera: CameraBatch, supersample: int = 2) -> Tensor:
    """Straight RGBA [B, H, W, 4] of every camera in the batch, averaged over supersample^2 sub-pixels.

    Always in fp32: called inside a mixed-precision training step (the oracle), autocast would give half-precision
    colours and sphere-tracing steps."""
    size, s = camera.height, supersample
    fine = replace(camera, poses=camera.poses.float(), height=size * s, focal=camera.focal * s)  # noise kept
    with torch.autocast(camera.poses.device.type, enabled=False):
        rays_o, rays_d, _ = fine.rays()
        rays_d = F.normalize(rays_d, dim=-1)  # unit rays for sphere tracing (a camera's noise moves them off unit)
        colour, alpha = shade_rays(scene, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
    premultiplied = torch.cat([colour * alpha[:, None], alpha[:, None]], -1)
    batch = len(camera.poses)
    premultiplied = premultiplied.reshape(batch, size, s, size, s, 4).mean(dim=(2, 4))
    coverage = premultiplied[..., 3:]
    straight = premultiplied[..., :3] / coverage.clamp(min=1e-8)
    return torch.cat([torch.where(coverage > 0, straight, torch.zeros_like(straight)), coverage], -1)


def over_background(rgba: Tensor, background: float = 1.0) -> Tensor:
    """Composite straight RGBA [..., 4] over a constant background: [..., 3]."""
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + background * (1 - alpha)
