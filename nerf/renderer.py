"""Volume rendering through an occupancy grid: ray marching, compositing, background, grid updates.

One interface, two backends (the CUDA extensions or their PyTorch references, chosen in ``raymarching.get_ops``).
Differences from the original, all deliberate: ``min_near`` is honoured, every ray's samples are kept (no buffer
sized by a running mean), depth is absolute (0 where nothing is hit), and the regularisers average over real
samples only, not over the zero padding rows of the sample buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.nn as nn
from torch import Tensor

import raymarching
from nerf.cameras import safe_normalize
from nerf.field import Field
from nerf.field.shading import needs_normals, textureless
from nerf.ray_stream import RayStream

T = TypeVar("T")

T_THRESH = 1e-4
ALIGN = 128
GRID_DECAY = 0.95
# Sample buffers are padded onto a ladder of sizes, SIZES_PER_DOUBLING between consecutive powers of two (at most
# 1/16 more rows): the field's matrix products then meet a few shapes again and again, and cuBLAS's per-shape choice
# of algorithm is cached. With the marcher's exact sizes every iteration brought new shapes, and each product's choice
# held the host 0.1-0.3 ms before its launch (an H100 trace: about 28 products per iteration).
SIZES_PER_DOUBLING = 16
# Samples drawn per render for the predicted-normal loss: its density-gradient target costs six field evaluations
# per drawn sample, a fixed budget instead of six per sample of the render.
NORMAL_ALIGN_SAMPLES = 4096


# A training march's output: the rays' nears, and the samples' positions, directions, steps and ray rows.
Samples = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


@dataclass
class RenderSettings:
    """How a batch of rays is rendered: shading model, light and extras."""

    shading: str = "albedo"
    ratio: float = 1.0  # ambient share of the Lambertian term
    # Light direction [3], or one per ray [rays, 3] (several frames' textureless passes in one march; albedo shading
    # only); None: random around the camera.
    light_d: Tensor | None = None
    perturb: bool = False  # jitter each ray's start
    bg_color: Tensor | float | None = None  # eval background (default white); training uses the background net
    need_normals: bool = False  # composite a normal image and the orientation loss
    need_smooth: bool = False  # 3-D normal smoothness loss (six more field evaluations per sample)
    # Also composite `textureless_image` (white under the light, this ambient share) from the same samples' normals:
    # the test videos' shaded pass without a second march and a second set of field evaluations.
    textureless_ratio: float | None = None
    # Predicted normals (a field with `predicts_normals`): also the loss tying them to the density-gradient normals.
    align_normals: bool = False

    @property
    def uses_normals(self) -> bool:
        """Whether the samples' normals are composited into an image (normals or the textureless pass)."""
        return self.need_normals or self.textureless_ratio is not None


@dataclass
class Marched:
    """Training rays marched, not yet shaded (`Renderer.march`): the rays' batch shape, their flat directions (for
    the background), their light and the march's samples."""

    prefix: torch.Size
    rays_d: Tensor
    light_d: Tensor
    samples: Samples


class Renderer(nn.Module):
    """Owns the field and the occupancy grid (buffers, so they are checkpointed with the weights).

    Any `Field` will do; a learned one (an nn.Module) is a submodule, so it moves and saves with the renderer.
    """

    def __init__(self, field: Field, bound: float, density_thresh: float = 10.0, min_near: float = 0.1,
                 dt_gamma: float = 0.0, max_steps: int = 512, grid_size: int = 128, backend: str = "auto",
                 ray_stream: bool = False) -> None:
        super().__init__()
        self.field = field
        self.bound = bound
        self.density_thresh = density_thresh
        self.min_near = min_near
        self.dt_gamma = dt_gamma
        self.max_steps = max_steps
        self.grid_size = grid_size
        self.cascade = 1 + max(0, math.ceil(math.log2(bound)))
        self.ops = raymarching.get_ops(backend)
        aabb = torch.tensor([-bound, -bound, -bound, bound, bound, bound], dtype=torch.float32)
        self.register_buffer("aabb", aabb)
        self.register_buffer("density_grid", torch.zeros(self.cascade, grid_size**3))
        self.register_buffer("density_bitfield", torch.zeros(self.cascade * grid_size**3 // 8, dtype=torch.uint8))
        self.register_buffer("mean_density", torch.zeros(()))
        self.register_buffer("grid_updates", torch.zeros((), dtype=torch.long))
        self.ray_stream = RayStream(enabled=ray_stream)

    # --- occupancy grid -------------------------------------------------------
    @torch.no_grad()
    def update_occupancy(self, decay: float = GRID_DECAY, chunk: int = 1 << 18) -> None:
        """Re-estimate density at a jittered point of every cell and refresh the occupancy bitfield."""
        size, device = self.grid_size, self.density_grid.device
        cells = torch.arange(size**3, device=device, dtype=torch.int32)
        coords = self.ops.morton3D_invert(cells).long()  # cell index in Morton order -> (x, y, z)
        fresh = torch.empty_like(self.density_grid)
        for level in range(self.cascade):
            level_bound = min(2**level, self.bound)
            half_cell = level_bound / size
            for start in range(0, size**3, chunk):
                xyz = coords[start:start + chunk].float() / (size - 1) * 2 - 1
                points = xyz * (level_bound - half_cell)
                points = points + (torch.rand_like(points) * 2 - 1) * half_cell
                fresh[level, start:start + chunk] = self.field.density(points)["sigma"].float()
        self.density_grid.copy_(torch.maximum(self.density_grid * decay, fresh))
        self.mean_density.copy_(self.density_grid.mean())
        self.grid_updates += 1
        threshold = min(float(self.mean_density), self.density_thresh)
        self.ops.packbits(self.density_grid, threshold, self.density_bitfield)
        self.ray_stream.grid_changed(device)

    @property
    def occupancy_threshold(self) -> float:
        return min(float(self.mean_density), self.density_thresh)

    # --- rendering ------------------------------------------------------------
    def _light(self, settings: RenderSettings, rays_o: Tensor) -> Tensor:
        if settings.light_d is not None:
            light = safe_normalize(settings.light_d.to(rays_o.device).float())
            if light.dim() == 2 and (light.shape[0] != rays_o.shape[0] or needs_normals(settings.shading)):
                raise ValueError("a light per ray needs one row per ray and serves the textureless pass only "
                                 "(albedo shading)")
            return light
        return safe_normalize(rays_o[0] + torch.randn(3, device=rays_o.device))

    def _background(self, rays_d: Tensor, settings: RenderSettings) -> Tensor:
        learned = self.field.background(rays_d) if self.training else None
        if learned is not None:
            return learned
        if settings.bg_color is None:
            return torch.ones(1, 3, device=rays_d.device)
        bg = settings.bg_color
        return bg if isinstance(bg, Tensor) else torch.full((1, 3), float(bg), device=rays_d.device)

    def render(self, rays_o: Tensor, rays_d: Tensor, settings: RenderSettings | None = None,
               max_ray_batch: int | None = None) -> dict[str, Tensor]:
        """Render rays [..., 3]: image [..., 3], depth [...], weights_sum [...], normal_image [..., 3] (if asked)
        and, in training mode, the orientation/smoothness losses."""
        settings = settings or RenderSettings()
        if self.training:
            return self.shade(self.march(rays_o, rays_d, settings), settings)
        prefix = rays_o.shape[:-1]
        rays_o, rays_d = flat_rays(rays_o, rays_d)
        light_d = self._light(settings, rays_o)
        # Chunks bound the reference marcher's memory; the CUDA marcher takes a whole frame at once (as the original
        # did), which needs far fewer launches per frame.
        chunk = max_ray_batch if max_ray_batch and self.ops.name == "torch" else rays_o.shape[0]
        parts = [self._render_eval(rays_o[i:i + chunk], rays_d[i:i + chunk],
                                   light_d[i:i + chunk] if light_d.dim() == 2 else light_d, settings)
                 for i in range(0, rays_o.shape[0], chunk)]
        out = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        return self._with_background(out, rays_d, settings, prefix)

    def march(self, rays_o: Tensor, rays_d: Tensor, settings: RenderSettings) -> Marched:
        """The first half of a training render: the rays' light drawn and their samples marched (on the ray
        stream), nothing shaded yet. The march reads its sample count on the host, a wait for the GPU's queue; a
        caller with several views marches them all first, so that their shading and losses queue without a wait
        in between (`render` is `shade(march(...))`)."""
        prefix = rays_o.shape[:-1]
        rays_o, rays_d = flat_rays(rays_o, rays_d)
        light_d = self._light(settings, rays_o)
        samples = self.on_ray_stream(self._march_train, rays_o, rays_d, settings.perturb)
        return Marched(prefix, rays_d, light_d, samples)

    def shade(self, marched: Marched, settings: RenderSettings) -> dict[str, Tensor]:
        """The second half of a training render (`march`): the field on the samples, composited, and the training
        losses of `settings`."""
        out = self._render_train(marched.samples, marched.light_d, settings)
        return self._with_background(out, marched.rays_d, settings, marched.prefix)

    def _with_background(self, out: dict[str, Tensor], rays_d: Tensor, settings: RenderSettings,
                         prefix: torch.Size) -> dict[str, Tensor]:
        """Composited rays over the background, shaped as the rays were given."""
        bg = self._background(rays_d, settings)
        for key in ("image", "textureless_image"):
            if key in out:
                out[key] = out[key] + (1 - out["weights_sum"][:, None]) * bg
        for key in ("image", "normal_image", "textureless_image"):
            if key in out:
                out[key] = out[key].reshape(*prefix, 3)
        for key in ("depth", "weights_sum"):
            out[key] = out[key].reshape(prefix)
        return out

    def _grid_arguments(self) -> dict:
        """The occupancy grid as the marchers take it."""
        return {"bound": self.bound, "density_bitfield": self.density_bitfield, "C": self.cascade, "H": self.grid_size}

    def _march_bounds(self, rays_o: Tensor, rays_d: Tensor) -> tuple[Tensor, Tensor]:
        return self.ops.near_far_from_aabb(rays_o, rays_d, self.aabb, self.min_near)

    def on_ray_stream(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn` on the ray stream of the renderer's device (`nerf.ray_stream`): for drawing and marching the
        training rays."""
        return self.ray_stream.run(self.density_bitfield.device, fn, *args, **kwargs)

    def _march_train(self, rays_o: Tensor, rays_d: Tensor, perturb: bool) -> Samples:
        """A training march of every ray: nears, and the samples' positions, directions, steps and ray rows."""
        nears, fars = self._march_bounds(rays_o, rays_d)
        xyzs, dirs, deltas, rays = self.ops.march_rays_train(
            rays_o, rays_d, **self._grid_arguments(), nears=nears, fars=fars, perturb=perturb, align=ALIGN,
            force_all_rays=True, dt_gamma=self.dt_gamma, max_steps=self.max_steps, buffer_rows=ladder_rows)
        return nears, xyzs, dirs, deltas, rays

    def _render_all_samples(self, samples: Samples, light_d: Tensor,
                            settings: RenderSettings) -> tuple[dict, Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
        """Every sample of every ray (one march's `samples`) in one field call, composited per ray: the outputs, and
        the samples' positions, directions, steps and densities (for the training losses)."""
        nears, xyzs, dirs, deltas, rays = samples
        sigmas, rgbs, normals = self.field(xyzs, dirs, light_d, settings.ratio, settings.shading,
                                           need_normals=settings.uses_normals or settings.need_smooth)
        weights_sum, depth, image = self.ops.composite_rays_train(sigmas, rgbs, deltas, rays, T_THRESH)
        hit = torch.where(weights_sum > 0, nears, torch.zeros_like(nears))
        out = {"image": image, "depth": depth + weights_sum * hit, "weights_sum": weights_sum}
        if light_d.dim() == 2 and _normal_image_keys(settings):  # rows in ray order, as the marchers write them
            ray_of_row = torch.repeat_interleave(rays[:, 0].long(), rays[:, 2].long())
            light_d = _pad_rows(light_d[ray_of_row], xyzs.shape[0])
        for key, colours in _normal_images(normals, light_d, settings).items():
            out[key] = self.ops.composite_rays_train(sigmas, colours, deltas, rays, T_THRESH)[2]
        return out, xyzs, dirs, deltas, (sigmas, normals)

    def _render_train(self, samples: Samples, light_d: Tensor, settings: RenderSettings) -> dict:
        out, xyzs, dirs, deltas, (sigmas, normals) = self._render_all_samples(samples, light_d, settings)
        real = deltas[:, 0] > 0  # padding rows of the sample buffer have zero step
        if settings.need_normals:
            occupancy = (1 - torch.exp(-sigmas)).detach()
            facing = (normals * dirs).sum(-1).clamp(min=0) ** 2
            out["loss_orient"] = _masked_mean(occupancy * facing, real)
        if settings.align_normals:
            out["loss_normal_pred"] = self._normal_alignment(xyzs, sigmas, normals, real)
        if settings.need_smooth:
            jitter = xyzs + torch.randn_like(xyzs) * 0.01
            out["loss_smooth"] = _masked_mean((normals - self.field.normal(jitter)).abs().mean(-1), real)
        return out

    def _normal_alignment(self, xyzs: Tensor, sigmas: Tensor, normals: Tensor, real: Tensor) -> Tensor:
        """Ref-NeRF's predicted-normal loss, mean of 1 - n_pred . n_grad weighted by the samples' occupancy (the
        orientation loss's weights), estimated on NORMAL_ALIGN_SAMPLES samples (at most as many as the render has)
        drawn in proportion to it. Both normals receive its gradient, so shading gradients on the predicted normals
        reach the geometry."""
        occupancy = (1 - torch.exp(-sigmas.double())).detach() * real
        # Drawn by inverting the cumulative occupancy (any number of samples, no host read); the tiny floor keeps
        # the draw defined when nothing is occupied, and padding rows then count for nothing.
        cdf = torch.cumsum(occupancy + 1e-20, 0)
        draws = min(NORMAL_ALIGN_SAMPLES, xyzs.shape[0])  # a small render needs no more draws than it has samples
        uniform = torch.rand(draws, device=cdf.device, dtype=cdf.dtype) * cdf[-1]
        picked = torch.searchsorted(cdf, uniform).clamp(max=xyzs.shape[0] - 1)
        target = self.field.gradient_normal(xyzs[picked])
        misalignment = 1 - (normals[picked].float() * target.float()).sum(-1)
        return (misalignment * real[picked]).mean()

    def _render_eval(self, rays_o: Tensor, rays_d: Tensor, light_d: Tensor, settings: RenderSettings) -> dict:
        """An evaluation render. The CUDA kernels march a few samples per live ray at a time and stop each ray
        once it is opaque (`_render_infer`, the original's); on the reference ops that loop costs a Python round
        per step, so they march and shade every sample at once (`_render_all_samples`): the same samples and
        the same compositing, some samples behind an opaque surface shaded for nothing."""
        if self.ops.name == "torch":
            return self._render_all_samples(self._march_train(rays_o, rays_d, settings.perturb), light_d, settings)[0]
        return self._render_infer(rays_o, rays_d, light_d, settings)

    def _render_infer(self, rays_o: Tensor, rays_d: Tensor, light_d: Tensor, settings: RenderSettings) -> dict:
        count, device = rays_o.shape[0], rays_o.device
        nears, fars = self._march_bounds(rays_o, rays_d)
        weights_sum = torch.zeros(count, device=device)
        depth = torch.zeros(count, device=device)
        image = torch.zeros(count, 3, device=device)
        extra_images = {key: torch.zeros(count, 3, device=device) for key in _normal_image_keys(settings)}
        alive = torch.arange(count, dtype=torch.int32, device=device)
        rays_t = nears.clone()
        step = 0
        while step < self.max_steps and alive.numel() > 0:
            n_alive = alive.numel()
            n_step = max(min(count // n_alive, 8), 1)
            xyzs, dirs, deltas = self.ops.march_rays(
                n_alive, n_step, alive, rays_t, rays_o, rays_d, **self._grid_arguments(), nears=nears, fars=fars,
                align=ALIGN, perturb=settings.perturb and step == 0, dt_gamma=self.dt_gamma,
                max_steps=self.max_steps)
            sigmas, rgbs, normals = self.field(xyzs, dirs, light_d, settings.ratio, settings.shading,
                                               need_normals=settings.uses_normals)
            sample_light = light_d
            if light_d.dim() == 2 and extra_images:  # rows [slot * n_step, (slot + 1) * n_step) of each live ray
                sample_light = _pad_rows(light_d[alive.long()].repeat_interleave(n_step, 0), xyzs.shape[0])
            for key, colours in _normal_images(normals, sample_light, settings).items():
                # Composite on copies of the ray state, so the colour pass below advances it exactly once.
                self.ops.composite_rays(n_alive, n_step, alive.clone(), rays_t.clone(), sigmas=sigmas.float(),
                                        rgbs=colours.float(), deltas=deltas, weights_sum=weights_sum.clone(),
                                        depth=depth.clone(), image=extra_images[key], T_thresh=T_THRESH)
            self.ops.composite_rays(n_alive, n_step, alive, rays_t, sigmas=sigmas.float(), rgbs=rgbs.float(),
                                    deltas=deltas, weights_sum=weights_sum, depth=depth, image=image,
                                    T_thresh=T_THRESH)
            alive = alive[alive >= 0]
            step += n_step
        return {"image": image, "depth": depth, "weights_sum": weights_sum, **extra_images}


def flat_rays(rays_o: Tensor, rays_d: Tensor) -> tuple[Tensor, Tensor]:
    """Rays [..., 3] as the marchers take them: [N, 3], float32, contiguous. Rays already in that form come back
    as they are, so a caller can make the copy elsewhere, e.g. on the ray stream: a camera's origins are one
    broadcast vector, and their copy made on the main stream would make the ray stream wait for it."""
    return rays_o.reshape(-1, 3).float().contiguous(), rays_d.reshape(-1, 3).float().contiguous()


def _normal_image_keys(settings: RenderSettings) -> list[str]:
    return [key for key, wanted in (("normal_image", settings.need_normals),
                                    ("textureless_image", settings.textureless_ratio is not None)) if wanted]


def _normal_images(normals: Tensor | None, light_d: Tensor, settings: RenderSettings) -> dict[str, Tensor]:
    """Per-sample colours of the images made from the normals: the normals themselves and the textureless pass."""
    colours = {}
    for key in _normal_image_keys(settings):
        assert normals is not None, "the field returns normals whenever settings.uses_normals"
        colours[key] = normals if key == "normal_image" else textureless(None, normals, light_d,
                                                                         settings.textureless_ratio)
    return colours


def ladder_rows(rows: int) -> int:
    """The smallest size >= `rows` on the sample buffers' ladder: a multiple of ALIGN and of 1/SIZES_PER_DOUBLING of
    the power of two below `rows`."""
    granule = max(ALIGN, (1 << max(rows - 1, 1).bit_length()) // (2 * SIZES_PER_DOUBLING))
    return -(-rows // granule) * granule


def _pad_rows(values: Tensor, rows: int) -> Tensor:
    """`values` [n, C] followed by zero rows up to `rows` (the padding rows of a sample buffer)."""
    return torch.cat([values, values.new_zeros(rows - values.shape[0], values.shape[1])])


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)

