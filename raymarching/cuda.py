"""The compiled kernels (``src/raymarching.cu``) behind the signatures of ``reference``.

Inputs are brought to the kernels' layout (float32, int32, contiguous); buffers that an op updates in place
must already have it. CPU tensors go to the reference unless the CUDA backend was asked for explicitly.
The only host synchronisation is reading the sample count when the training buffers are trimmed.
"""

from __future__ import annotations

import functools
import types
from typing import Callable, TypeVar

import torch
from torch import Tensor

from raymarching import reference
from raymarching.cuda_build import use_compiled
from raymarching.reference import round_up, step_bounds, train_buffer_rows

F = TypeVar("F", bound=Callable)


def _float32(*tensors: Tensor) -> list[Tensor]:
    return [x.float().contiguous() for x in tensors]


def _require(tensor: Tensor, dtype: torch.dtype, name: str) -> None:
    """Buffers updated in place cannot be converted behind the caller's back."""
    if tensor.dtype != dtype or not tensor.is_contiguous() or not tensor.is_cuda:
        raise ValueError(f"{name} must be a contiguous CUDA {dtype} tensor (it is updated in place)")


def _kernel_precision(sigmas: Tensor, rgbs: Tensor) -> tuple[Tensor, Tensor]:
    """Half stays half when both inputs are half; anything else runs in float32."""
    dtype = torch.half if sigmas.dtype == rgbs.dtype == torch.half else torch.float32
    if rgbs.shape[-1] != 3:
        raise ValueError(f"the CUDA compositing kernels take 3 channels, got {rgbs.shape[-1]}")
    return sigmas.reshape(-1).to(dtype).contiguous(), rgbs.to(dtype).contiguous()


def _or_reference(method: F) -> F:
    """Run the reference op when the first tensor argument is not on a CUDA device (backend "auto")."""

    @functools.wraps(method)
    def call(self: "CudaOps", *args, **kwargs):
        first = next(a for a in (*args, *kwargs.values()) if isinstance(a, Tensor))
        if use_compiled(self.ext, self.requested, first):
            return method(self, *args, **kwargs)
        return getattr(reference, method.__name__)(*args, **kwargs)

    return call  # type: ignore[return-value]


class _CompositeTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext: types.ModuleType, sigmas: Tensor, rgbs: Tensor, deltas: Tensor, rays: Tensor,
                T_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
        sigma_k, rgb_k = _kernel_precision(sigmas, rgbs)
        deltas = deltas.float().contiguous()
        rays = rays.to(torch.int32).contiguous()
        n = rays.shape[0]
        weights_sum = sigma_k.new_zeros(n, dtype=torch.float32)
        depth = sigma_k.new_zeros(n, dtype=torch.float32)
        image = sigma_k.new_zeros(n, 3, dtype=torch.float32)
        ext.composite_rays_train_forward(sigma_k, rgb_k, deltas, rays, T_thresh, weights_sum, depth, image)
        ctx.save_for_backward(sigma_k, rgb_k, deltas, rays, weights_sum, image)
        ctx.ext, ctx.T_thresh = ext, T_thresh
        ctx.sigma_like, ctx.rgb_dtype = (sigmas.shape, sigmas.dtype), rgbs.dtype
        ctx.mark_non_differentiable(depth)
        return weights_sum, depth, image

    @staticmethod
    def backward(ctx, grad_weights_sum: Tensor, _grad_depth: Tensor, grad_image: Tensor):
        sigma_k, rgb_k, deltas, rays, weights_sum, image = ctx.saved_tensors
        grad_sigmas = torch.zeros_like(sigma_k)
        grad_rgbs = torch.zeros_like(rgb_k)
        ctx.ext.composite_rays_train_backward(grad_weights_sum.float().contiguous(), grad_image.float().contiguous(),
                                              sigma_k, rgb_k, deltas, rays, weights_sum, image, ctx.T_thresh,
                                              grad_sigmas, grad_rgbs)
        sigma_shape, sigma_dtype = ctx.sigma_like
        return (None, grad_sigmas.reshape(sigma_shape).to(sigma_dtype), grad_rgbs.to(ctx.rgb_dtype), None, None,
                None)


class CudaOps:
    """The ops bound to one loaded extension module."""

    def __init__(self, ext: types.ModuleType, requested: str) -> None:
        self.ext = ext
        self.requested = requested

    @_or_reference
    def near_far_from_aabb(self, rays_o: Tensor, rays_d: Tensor, aabb: Tensor,
                           min_near: float = 0.2) -> tuple[Tensor, Tensor]:
        rays_o, rays_d = _float32(rays_o, rays_d)
        aabb = aabb.to(device=rays_o.device, dtype=torch.float32).contiguous()
        nears = torch.empty(rays_o.shape[0], device=rays_o.device)
        fars = torch.empty_like(nears)
        self.ext.near_far_from_aabb(rays_o, rays_d, aabb, min_near, nears, fars)
        return nears, fars

    @_or_reference
    def sph_from_ray(self, rays_o: Tensor, rays_d: Tensor, radius: float) -> Tensor:
        rays_o, rays_d = _float32(rays_o, rays_d)
        coords = torch.empty(rays_o.shape[0], 2, device=rays_o.device)
        self.ext.sph_from_ray(rays_o, rays_d, radius, coords)
        return coords

    @_or_reference
    def morton3D(self, coords: Tensor) -> Tensor:
        coords = coords.to(torch.int32).contiguous()
        indices = torch.empty(coords.shape[0], dtype=torch.int32, device=coords.device)
        self.ext.morton3D(coords, indices)
        return indices

    @_or_reference
    def morton3D_invert(self, indices: Tensor) -> Tensor:
        indices = indices.to(torch.int32).contiguous()
        coords = torch.empty(indices.shape[0], 3, dtype=torch.int32, device=indices.device)
        self.ext.morton3D_invert(indices, coords)
        return coords

    @_or_reference
    def packbits(self, grid: Tensor, thresh: float, bitfield: Tensor | None = None) -> Tensor:
        grid = grid.float().contiguous()
        if bitfield is None:
            bitfield = torch.empty(grid.numel() // 8, dtype=torch.uint8, device=grid.device)
        _require(bitfield, torch.uint8, "bitfield")
        self.ext.packbits(grid, thresh, bitfield)
        return bitfield

    @_or_reference
    def march_rays_train(self, rays_o: Tensor, rays_d: Tensor, bound: float, density_bitfield: Tensor, C: int,
                         H: int, nears: Tensor, fars: Tensor, step_counter: Tensor | None = None,
                         mean_count: int = -1, perturb: bool = False, align: int = -1, force_all_rays: bool = False,
                         dt_gamma: float = 0.0, max_steps: int = 1024,
                         buffer_rows: Callable[[int], int] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rays_o, rays_d, nears, fars = _float32(rays_o, rays_d, nears, fars)
        bitfield = density_bitfield.to(rays_o.device).contiguous()
        n, device = rays_o.shape[0], rays_o.device
        dt_min, dt_max = step_bounds(C, H, max_steps)
        noises = torch.rand(n, device=device) if perturb else torch.zeros(n, device=device)
        grid_args = (bitfield, bound, dt_gamma, dt_min, dt_max, C, H, max_steps, nears, fars, noises)
        counts = torch.empty(n, dtype=torch.int32, device=device)
        self.ext.march_rays_train_count(rays_o, rays_d, *grid_args, counts)
        if step_counter is None:
            step_counter = torch.zeros(2, dtype=torch.int32, device=device)
        # Rows in ray order with offsets from a prefix sum: the same layout as the reference, deterministic.
        offsets = step_counter[0] + torch.cumsum(counts, 0) - counts
        rays = torch.stack([torch.arange(n, device=device), offsets, counts], -1).to(torch.int32).contiguous()
        step_counter[0] += counts.sum().to(step_counter.dtype)
        step_counter[1] += n
        _, size = train_buffer_rows(n, step_counter, mean_count, align, force_all_rays, max_steps, buffer_rows)
        xyzs = torch.zeros(size, 3, device=device)
        dirs = torch.zeros(size, 3, device=device)
        deltas = torch.zeros(size, 2, device=device)
        self.ext.march_rays_train_write(rays_o, rays_d, *grid_args, rays, size, xyzs, dirs, deltas)
        return xyzs, dirs, deltas, rays

    @_or_reference
    def composite_rays_train(self, sigmas: Tensor, rgbs: Tensor, deltas: Tensor, rays: Tensor,
                             T_thresh: float = 1e-4) -> tuple[Tensor, Tensor, Tensor]:
        return _CompositeTrain.apply(self.ext, sigmas, rgbs, deltas, rays, T_thresh)

    @_or_reference
    def march_rays(self, n_alive: int, n_step: int, rays_alive: Tensor, rays_t: Tensor, rays_o: Tensor,
                   rays_d: Tensor, bound: float, density_bitfield: Tensor, C: int, H: int, nears: Tensor, fars: Tensor,
                   align: int = -1, perturb: bool = False, dt_gamma: float = 0.0,
                   max_steps: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
        rays_o, rays_d, rays_t, fars = _float32(rays_o, rays_d, rays_t, fars)
        device = rays_o.device
        rays_alive = rays_alive.to(torch.int32).contiguous()
        bitfield = density_bitfield.to(device).contiguous()
        dt_min, dt_max = step_bounds(C, H, max_steps)
        noises = torch.rand(n_alive, device=device) if perturb else torch.zeros(n_alive, device=device)
        size = round_up(n_alive * n_step, align)
        xyzs = torch.zeros(size, 3, device=device)
        dirs = torch.zeros(size, 3, device=device)
        deltas = torch.zeros(size, 2, device=device)
        self.ext.march_rays(n_alive, n_step, rays_alive, rays_t, rays_o, rays_d, bitfield, bound, dt_gamma, dt_min,
                            dt_max, C, H, fars, noises, xyzs, dirs, deltas)
        return xyzs, dirs, deltas

    @_or_reference
    def composite_rays(self, n_alive: int, n_step: int, rays_alive: Tensor, rays_t: Tensor, sigmas: Tensor,
                       rgbs: Tensor, deltas: Tensor, weights_sum: Tensor, depth: Tensor, image: Tensor,
                       T_thresh: float = 1e-2) -> None:
        _require(rays_alive, torch.int32, "rays_alive")
        for name, buffer in (("rays_t", rays_t), ("weights_sum", weights_sum), ("depth", depth), ("image", image)):
            _require(buffer, torch.float32, name)
        sigma_k, rgb_k = _kernel_precision(sigmas, rgbs)
        self.ext.composite_rays(n_alive, n_step, T_thresh, rays_alive, rays_t, sigma_k, rgb_k,
                                deltas.float().contiguous(), weights_sum, depth, image)
