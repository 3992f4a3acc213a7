"""Camera maths: poses on a sphere around the object, pinhole rays, view-direction buckets.

World frame: y is up, the object sits in [-bound, bound]^3 at the origin. A camera at polar angle theta (down
from +y) and azimuth phi (0 on the +z axis, growing towards +x) sits at
``r * (sin(theta) sin(phi), cos(theta), sin(theta) cos(phi))`` and looks at the origin.

The original builds a left-handed look-at frame, so its renders are mirror images and its meshes the mirror of
the photographed object. Here the frame is right-handed: image x points to the viewer's right, image y down, and
the camera looks along +z of its own frame (``left_handed=True`` reproduces the original).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

DIRECTION_NAMES = ("front", "side", "back", "side", "overhead", "bottom")
FRONT, OVERHEAD, BOTTOM = 0, 4, 5
THETA_RANGE = (0.0, 120.0)
PHI_RANGE = (0.0, 360.0)


def safe_normalize(x: Tensor, eps: float = 1e-20) -> Tensor:
    return x / torch.sqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=eps))


def sphere_point(radius: Tensor, theta: Tensor, phi: Tensor) -> Tensor:
    """Cartesian camera centres [B, 3] from spherical coordinates in radians."""
    return torch.stack(
        [radius * torch.sin(theta) * torch.sin(phi), radius * torch.cos(theta), radius * torch.sin(theta) * torch.cos(phi)],
        dim=-1,
    )


def look_at(centers: Tensor, targets: Tensor | None = None, up_noise: Tensor | None = None,
            left_handed: bool = False) -> Tensor:
    """Camera-to-world matrices [B, 4, 4] whose columns are (right, down, forward, centre)."""
    targets = torch.zeros_like(centers) if targets is None else targets
    forward = safe_normalize(targets - centers)
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=centers.dtype, device=centers.device).expand_as(forward)
    right = safe_normalize(torch.cross(forward, world_up, dim=-1))
    down = torch.cross(forward, right, dim=-1)
    down = safe_normalize(down if up_noise is None else down + up_noise)
    if left_handed:  # the original's frame: same down and forward, mirrored right
        right = -right
    poses = torch.eye(4, dtype=centers.dtype, device=centers.device).repeat(centers.shape[0], 1, 1)
    poses[:, :3, :3] = torch.stack([right, down, forward], dim=-1)
    poses[:, :3, 3] = centers
    return poses


def focal_from_fovy(fovy_deg: float | Tensor, height: int) -> float | Tensor:
    half = (fovy_deg if isinstance(fovy_deg, Tensor) else torch.tensor(float(fovy_deg))) * (math.pi / 360)
    focal = height / (2 * torch.tan(half))
    return float(focal) if not isinstance(fovy_deg, Tensor) else focal


def to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """A host tensor copied to `device` without waiting for the device's queue.

    A blocking copy from pageable host memory synchronises the CUDA stream: the host waits for all queued GPU work,
    and then the GPU idles while the host prepares the next launches (five such waits per training iteration drew
    the cameras and pixels). CUDA stages a non-blocking copy from pageable memory before it returns, so the host
    tensor may change or go right after; only copies to CUDA are made non-blocking (a device-to-host copy would need
    a wait before its result is read)."""
    return tensor.to(device, non_blocking=torch.device(device).type == "cuda")


def get_rays(poses: Tensor, focal: float, height: int, width: int, num_rays: int = -1,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Rays through pixel centres of square pinhole cameras.

    Returns rays_o, rays_d [B, N, 3] (unit directions) and the flat pixel indices (row-major) when
    ``num_rays > 0`` random pixels are drawn (with replacement, shared by the batch), else None.
    """
    device = poses.device
    cols = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    rows = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    jj, ii = torch.meshgrid(rows, cols, indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    inds = None
    if num_rays > 0:
        num_rays = min(num_rays, height * width)
        inds = to_device(torch.randint(0, height * width, (num_rays,), generator=generator, device="cpu"), device)
        ii, jj = ii[inds], jj[inds]
    dirs_cam = torch.stack([(ii - width / 2) / focal, (jj - height / 2) / focal, torch.ones_like(ii)], dim=-1)
    dirs_cam = safe_normalize(dirs_cam)
    rays_d = dirs_cam @ poses[:, :3, :3].transpose(1, 2).float()
    rays_o = poses[:, None, :3, 3].float().expand_as(rays_d)
    return rays_o, rays_d, inds


def view_direction(theta_deg: Tensor, phi_deg: Tensor, angle_overhead: float = 30.0,
                   angle_front: float = 60.0) -> Tensor:
    """Bucket ids (see DIRECTION_NAMES): by azimuth first, then overhead and bottom override."""
    phi = torch.remainder(phi_deg, 360.0)
    res = torch.full_like(phi, 3, dtype=torch.long)
    res[phi < 180 + angle_front] = 2
    res[phi < 180] = 1
    res[phi < angle_front] = FRONT
    res[theta_deg <= angle_overhead] = OVERHEAD
    res[theta_deg >= 180 - angle_overhead] = BOTTOM
    return res


def direction_prompts(text: str, negative: str, dir_text: bool, suppress_face: str | None) -> list[tuple[str, str]]:
    """(positive, negative) prompt for every view bucket, or one pair when view-dependent prompts are off."""
    if not dir_text:
        return [(text, negative)]
    pairs = []
    for index, name in enumerate(DIRECTION_NAMES):
        neg = negative
        if suppress_face and index != FRONT:
            neg = f"{negative}, {suppress_face}" if negative else suppress_face
        pairs.append((f"{text}, {name} view", neg))
    return pairs


@dataclass
class CameraBatch:
    """Cameras of one render: poses, square resolution, focal length and per-camera view bucket."""

    poses: Tensor  # [B, 4, 4] camera-to-world
    height: int
    focal: float
    directions: Tensor  # [B] bucket ids
    theta: Tensor  # [B] degrees
    phi: Tensor  # [B] degrees
    # [2, 3]: one offset added to every ray origin and one to every direction (camera noise, `ray_noise`). Kept on
    # the camera so that whatever renders it (the field, the oracle's ground truth) uses the same rays.
    ray_offset: Tensor | None = None

    @property
    def centers(self) -> Tensor:
        return self.poses[:, :3, 3]

    def rays(self, num_rays: int = -1, generator: torch.Generator | None = None):
        rays_o, rays_d, index = get_rays(self.poses, self.focal, self.height, self.height, num_rays, generator)
        return (*offset_rays(rays_o, rays_d, self.ray_offset), index)

    def select(self, start: int, stop: int) -> "CameraBatch":
        """Cameras start..stop-1 of the batch, as a batch of their own."""
        return replace(self, poses=self.poses[start:stop], directions=self.directions[start:stop],
                       theta=self.theta[start:stop], phi=self.phi[start:stop])

    def to(self, device: torch.device | str) -> "CameraBatch":
        offset = None if self.ray_offset is None else to_device(self.ray_offset, device)
        return replace(self, poses=to_device(self.poses, device), directions=to_device(self.directions, device),
                       theta=to_device(self.theta, device), phi=to_device(self.phi, device), ray_offset=offset)


def ray_noise(std: float, device: torch.device | str) -> Tensor | None:
    """The original's camera noise: one Gaussian offset (std `std`) for every ray origin and one for every
    direction, [2, 3]; None when `std` is 0."""
    if std <= 0:
        return None
    return torch.stack([torch.randn(3, device=device), torch.randn(3, device=device)]) * std


def offset_rays(rays_o: Tensor, rays_d: Tensor, offset: Tensor | None) -> tuple[Tensor, Tensor]:
    """Rays moved by a `ray_noise` offset (directions are not renormalised, as in the original)."""
    if offset is None:
        return rays_o, rays_d
    return rays_o + offset[0].to(rays_o.dtype), rays_d + offset[1].to(rays_d.dtype)


def _uniform(low: float, high: float, size: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(size, generator=generator) * (high - low) + low


def random_cameras(size: int, height: int, *, radius_range: tuple[float, float], fovy_range: tuple[float, float],
                   uniform_sphere_rate: float, angle_overhead: float, angle_front: float,
                   jitter: bool = False, left_handed: bool = False,
                   theta_range: tuple[float, float] = THETA_RANGE, phi_range: tuple[float, float] = PHI_RANGE,
                   generator: torch.Generator | None = None) -> CameraBatch:
    """Random training cameras looking at the origin (one FoV per batch, as the original)."""
    radius = _uniform(*radius_range, size, generator)
    if torch.rand((), generator=generator).item() < uniform_sphere_rate:
        box = torch.stack([_uniform(-1, 1, size, generator), _uniform(0, 1, size, generator),
                           _uniform(-1, 1, size, generator)], dim=-1)
        unit = safe_normalize(box)
        theta = torch.acos(unit[:, 1].clamp(-1, 1))
        phi = torch.remainder(torch.atan2(unit[:, 0], unit[:, 2]), 2 * math.pi)
        centers = unit * radius[:, None]
    else:
        theta = torch.deg2rad(_uniform(*theta_range, size, generator))
        phi = torch.deg2rad(_uniform(*phi_range, size, generator))
        centers = sphere_point(radius, theta, phi)
    theta_deg, phi_deg = torch.rad2deg(theta), torch.rad2deg(phi)
    targets, up_noise = None, None
    if jitter:
        centers = centers + (torch.rand(size, 3, generator=generator) * 0.2 - 0.1)
        targets = torch.randn(size, 3, generator=generator) * 0.2
        up_noise = torch.randn(size, 3, generator=generator) * 0.02
    poses = look_at(centers, targets, up_noise, left_handed=left_handed)
    fovy = float(_uniform(*fovy_range, 1, generator))
    return CameraBatch(poses, height, focal_from_fovy(fovy, height),
                       view_direction(theta_deg, phi_deg, angle_overhead, angle_front), theta_deg, phi_deg)


def fixed_cameras(theta_deg: float, phi_deg: Tensor, radius: float, fovy: float, height: int,
                  angle_overhead: float = 30.0, angle_front: float = 60.0, left_handed: bool = False) -> CameraBatch:
    """Cameras at one polar angle and radius, at the given azimuths (degrees)."""
    phi_deg = phi_deg.float()
    theta = torch.full_like(phi_deg, theta_deg)
    centers = sphere_point(torch.full_like(phi_deg, radius), torch.deg2rad(theta), torch.deg2rad(phi_deg))
    poses = look_at(centers, left_handed=left_handed)
    return CameraBatch(poses, height, focal_from_fovy(fovy, height),
                       view_direction(theta, phi_deg, angle_overhead, angle_front), theta, phi_deg)


def circle_cameras(count: int, theta_deg: float, radius: float, fovy: float, height: int,
                   left_handed: bool = False, **angles: float) -> CameraBatch:
    """The circular validation/test path: ``count`` azimuths k/count * 360 degrees, starting at the input view."""
    phi = torch.arange(count, dtype=torch.float32) * (360.0 / count)
    return fixed_cameras(theta_deg, phi, radius, fovy, height, left_handed=left_handed, **angles)
