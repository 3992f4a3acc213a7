"""What a run shows a person: validation grids, the six test videos, real-view frames, training renders, the mesh.

Each output is a function of explicit inputs (a `Frames` renderer, cameras, a folder, a step), so that training,
`--test` and the tools produce them the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from nerf.cameras import CameraBatch, circle_cameras
from nerf.data import RealView
from nerf.optim import EMA
from nerf.renderer import Renderer, RenderSettings
from nerf.visualize import depth_to_image, grid, normals_to_image, save_png, save_video, to_uint8

log = logging.getLogger("realfusion")
TEST_FRAMES = 100
ORBIT_VIEWS = 8
VIDEO_STREAMS = ("rgb", "opacity", "depth", "normals", "textureless", "grid")
# Rays of the test-video frames marched together (ten 128x128 frames): the incremental marcher's rounds (a launch
# series and a host read each) are shared by the batch instead of repeated per frame; each ray's samples stay its
# own. A ray budget rather than a frame count bounds the memory at any --HW_vis.
VIDEO_BATCH_RAYS = 10 * 128 * 128


def video_batch(size: int) -> int:
    """Frames of side `size` rendered together (at least one)."""
    return max(1, min(TEST_FRAMES, VIDEO_BATCH_RAYS // (size * size)))


@dataclass(frozen=True)
class Orbit:
    """The circular path of validation and test views (it starts at the input camera)."""

    pose_angle: float
    radius: float
    fovy: float
    angle_overhead: float
    angle_front: float
    left_handed: bool = False

    def cameras(self, count: int, size: int, device: torch.device) -> CameraBatch:
        return circle_cameras(count, self.pose_angle, self.radius, self.fovy, size, left_handed=self.left_handed,
                              angle_overhead=self.angle_overhead, angle_front=self.angle_front).to(device)


@dataclass
class Frames:
    """Whole-frame evaluation renders of a renderer along an orbit."""

    renderer: Renderer
    orbit: Orbit
    max_ray_batch: int
    half: bool = False  # fp16 autocast (CUDA), as the run trains

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.float16) if self.half else contextlib.nullcontext()

    @property
    def device(self) -> torch.device:
        return self.renderer.density_grid.device

    @property
    def depth_range(self) -> tuple[float, float]:
        """Near and far depth of the scene cube seen from the orbit, for depth images."""
        extent = self.renderer.bound * math.sqrt(3)
        return max(self.orbit.radius - extent, 0.0), self.orbit.radius + extent

    def depth_image(self, out: dict[str, Tensor]) -> Tensor:
        return depth_to_image(out["depth"], out["weights_sum"], *self.depth_range)

    @torch.no_grad()
    def render(self, camera: CameraBatch, index: int, settings: RenderSettings) -> dict[str, Tensor]:
        """Camera `index` of the batch; outputs as [H, W, ...] float tensors."""
        rays_o, rays_d, _ = camera.select(index, index + 1).rays()
        with self.autocast():
            out = self.renderer.render(rays_o, rays_d, settings, max_ray_batch=self.max_ray_batch)
        size = camera.height
        return {k: v.reshape(size, size, *v.shape[2:]).float() for k, v in out.items() if v.dim() >= 2}

    @torch.no_grad()
    def render_lit(self, camera: CameraBatch, indices: range, settings: RenderSettings) -> list[dict[str, Tensor]]:
        """Cameras `indices` of the batch in one render, each lit from its own centre (what `render` gives with
        ``light_d=camera.centers[k]``); outputs as `render`'s, one dict per camera."""
        rays_o, rays_d, _ = camera.select(indices.start, indices.stop).rays()  # [B, H*W, 3], camera-major
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        pixels = camera.height * camera.height
        lights = camera.centers[indices.start:indices.stop].repeat_interleave(pixels, 0)
        lit = dataclasses.replace(settings, light_d=lights)
        with self.autocast():
            out = self.renderer.render(rays_o, rays_d, lit, max_ray_batch=self.max_ray_batch)
        size = camera.height
        return [{k: v[n * pixels:(n + 1) * pixels].reshape(size, size, *v.shape[1:]).float()
                 for k, v in out.items()} for n in range(len(indices))]


def input_panel(real_view: RealView | None, size: int) -> Tensor:
    """The input image over white at `size` (black when there is none)."""
    if real_view is None:
        return torch.zeros(size, size, 3)
    rgba = real_view.rgba.permute(2, 0, 1)[None].float()
    rgba = torch.nn.functional.interpolate(rgba, size=(size, size), mode="bilinear", align_corners=False)[0]
    rgba = rgba.permute(1, 2, 0)
    return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])


@torch.no_grad()
def save_validation(frames: Frames, real_view: RealView | None, ema: EMA, *, size: int, out_dir: Path,
                    epoch: int) -> Tensor:
    """Input view with live weights (6 panels) and 8 orbit views with averaged weights (rgb/opacity/depth).

    Returns the orbit grid [H, W, 3] (for tensorboard)."""
    renderer = frames.renderer
    renderer.eval()
    if real_view is not None:
        out = frames.render(real_view.camera, 0, RenderSettings())
        gt = real_view.rgba
        panels = [gt[..., :3], gt[..., 3:], gt[..., :3] * gt[..., 3:], out["image"], out["weights_sum"][..., None],
                  frames.depth_image(out)]
        save_png(out_dir / f"real_ep{epoch:04d}.png", grid([panels]))
    with ema.averaged():
        camera = frames.orbit.cameras(ORBIT_VIEWS, size, frames.device)
        renders = [frames.render(camera, k, RenderSettings()) for k in range(ORBIT_VIEWS)]
    rows = [[r["image"] for r in renders], [r["weights_sum"][..., None] for r in renders],
            [frames.depth_image(r) for r in renders]]
    image = grid(rows)
    save_png(out_dir / f"orbit_ep{epoch:04d}.png", image)
    renderer.train()
    return image


def save_training_render(frames: Frames, out: dict[str, Tensor], size: int, path: Path) -> None:
    """A synthetic training view: image, depth and (when rendered) normals."""
    ws = out["weights_sum"].detach().reshape(size, size)
    panels = [out["image"].detach().reshape(size, size, 3),
              depth_to_image(out["depth"].detach().reshape(size, size), ws, *frames.depth_range)]
    if "normal_image" in out:
        panels.append(normals_to_image(out["normal_image"].detach().reshape(size, size, 3), ws))
    save_png(path, grid([panels]))


@torch.no_grad()
def render_videos(frames: Frames, real_view: RealView | None, *, size: int, results_dir: Path,
                  name: str) -> dict[str, Path]:
    """The 360-degree videos: rgb, opacity, depth, normals, textureless and a 2x3 grid with the input."""
    frames.renderer.eval()
    camera = frames.orbit.cameras(TEST_FRAMES, size, frames.device)
    streams: dict[str, list[np.ndarray]] = {k: [] for k in VIDEO_STREAMS}
    gt = input_panel(real_view, size)
    settings = RenderSettings(need_normals=True, textureless_ratio=0.1)
    batch = video_batch(size)
    # One march serves every stream of a batch of frames; the textureless pass reuses the samples' normals.
    with tqdm(total=TEST_FRAMES, desc="test video", dynamic_ncols=True) as progress:
        for start in range(0, TEST_FRAMES, batch):
            for out in frames.render_lit(camera, range(start, min(start + batch, TEST_FRAMES)), settings):
                add_video_frame(streams, out, frames, gt)
                progress.update(1)
    paths = {key: save_video(results_dir / f"{name}_{key}.mp4", images) for key, images in streams.items()}
    log.info("wrote %d-frame videos to %s", TEST_FRAMES, results_dir)
    return paths


def add_video_frame(streams: dict[str, list[np.ndarray]], out: dict[str, Tensor], frames: Frames, gt: Tensor) -> None:
    """One frame of every video stream from a lit render with normals and the textureless pass."""
    ws = out["weights_sum"]
    frame = {"rgb": out["image"], "opacity": ws[..., None], "depth": frames.depth_image(out),
             "normals": normals_to_image(out["normal_image"], ws), "textureless": out["textureless_image"]}
    frame["grid"] = grid([[gt, frame["rgb"], frame["opacity"]],
                          [frame["depth"], frame["normals"], frame["textureless"]]])
    for key, image in frame.items():
        streams[key].append(to_uint8(image))


@torch.no_grad()
def render_real_views(frames: Frames, *, size: int, out_dir: Path) -> Path:
    """--test_on_real_data: the 8 orbit views at the input resolution, as PNG frames."""
    frames.renderer.eval()
    camera = frames.orbit.cameras(ORBIT_VIEWS, size, frames.device)
    for k in range(ORBIT_VIEWS):
        save_png(out_dir / f"{k:03d}.png", frames.render(camera, k, RenderSettings())["image"])
    return out_dir


@torch.no_grad()
def export_mesh(renderer: Renderer, *, out_dir: Path, resolution: int, threshold: float | None,
                decimate_target: int) -> dict[str, Path]:
    """The textured mesh of the density field (iso-level: `threshold`, else the occupancy threshold)."""
    from nerf.mesh import export_mesh as export

    field = renderer.field
    paths = export(lambda x: field.density(x)["sigma"], lambda x: field.density(x)["albedo"], renderer.bound,
                   out_dir, resolution=resolution, threshold=threshold or renderer.occupancy_threshold,
                   decimate_target=decimate_target or None, device=renderer.density_grid.device)
    log.info("mesh written: %s", ", ".join(str(p) for p in paths.values()))
    return paths
