"""Pure-PyTorch ray marching and compositing: the backend for machines without CUDA and the test oracle.

Every op follows the contract of the compiled kernels (``src/raymarching.cu``) and repeats their float32
arithmetic operation by operation, so both backends choose the same occupancy cells except for exact ties
at cell boundaries. Work is vectorised over rays; only the march itself loops, once per step along the
rays (all rays advance together).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

FLT_MAX = float(np.finfo(np.float32).max)
SQRT3 = float(np.float32(1.7320508075688772))


# --- small helpers shared by the ops --------------------------------------------------------------------
def round_up(count: int, align: int) -> int:
    """The kernels' buffer rounding: an exact multiple still gets one extra block (``m + align - m % align``)."""
    return count + align - count % align if align > 0 else count


def step_bounds(C: int, H: int, max_steps: int) -> tuple[float, float]:
    """(dt_min, dt_max) as float32 values: the smallest step spans the cube diagonal in ``max_steps`` steps,
    the largest is one cell of the coarsest cascade."""
    two_sqrt3 = np.float32(2) * np.float32(SQRT3)
    dt_min = two_sqrt3 / np.float32(max_steps)
    dt_max = two_sqrt3 * np.float32(2.0 ** (C - 1)) / np.float32(H)
    return float(dt_min), float(dt_max)


def _clamp_dt(t: Tensor, dt_gamma: float, dt_min: float, dt_max: float) -> Tensor:
    return (t * dt_gamma).clamp(dt_min, dt_max)


def _float32(*tensors: Tensor) -> list[Tensor]:
    return [x.float().contiguous() for x in tensors]


# --- geometry -------------------------------------------------------------------------------------------
def near_far_from_aabb(rays_o: Tensor, rays_d: Tensor, aabb: Tensor, min_near: float = 0.2) -> tuple[Tensor, Tensor]:
    """Slab test against the box; rays that miss get near = far = FLT_MAX. Intervals are intersected in
    x, y, z order with the kernel's comparisons, so NaN slabs (origin on a slab plane of an axis-parallel
    ray) are handled the same way."""
    rays_o, rays_d = _float32(rays_o, rays_d)
    aabb = aabb.to(device=rays_o.device, dtype=torch.float32)
    inv_d = 1 / rays_d
    lo = (aabb[:3] - rays_o) * inv_d
    hi = (aabb[3:] - rays_o) * inv_d
    swap = lo > hi
    lo, hi = torch.where(swap, hi, lo), torch.where(swap, lo, hi)
    near, far = lo[:, 0], hi[:, 0]
    miss = torch.zeros_like(near, dtype=torch.bool)
    for axis in (1, 2):
        near_k, far_k = lo[:, axis], hi[:, axis]
        miss = miss | (near > far_k) | (near_k > far)
        near = torch.where(near_k > near, near_k, near)
        far = torch.where(far_k < far, far_k, far)
    near = torch.where(near < min_near, torch.full_like(near, min_near), near)
    big = torch.full_like(near, FLT_MAX)
    return torch.where(miss, big, near), torch.where(miss, big, far)


def sph_from_ray(rays_o: Tensor, rays_d: Tensor, radius: float) -> Tensor:
    """Where each ray leaves the sphere of ``radius`` (larger root), as (2θ/π − 1, φ/π) with y up."""
    rays_o, rays_d = _float32(rays_o, rays_d)
    a = (rays_d * rays_d).sum(-1)
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius * radius
    t = (-b + torch.sqrt(b * b - a * c)) / a
    x, y, z = (rays_o + t[:, None] * rays_d).unbind(-1)
    theta = torch.atan2(torch.sqrt(x * x + z * z), y)
    phi = torch.atan2(z, x)
    return torch.stack([2 * theta / torch.pi - 1, phi / torch.pi], -1)


# --- occupancy grid indexing ------------------------------------------------------------------------------
def _expand_bits(v: Tensor) -> Tensor:
    """Spread the low 10 bits of v to every third bit (uint32 arithmetic emulated in int64)."""
    v = v & 0xFFFFFFFF
    v = (v * 0x00010001) & 0xFF0000FF
    v = (v * 0x00000101) & 0x0F00F00F
    v = (v * 0x00000011) & 0xC30C30C3
    return (v * 0x00000005) & 0x49249249


def _compact_bits(v: Tensor) -> Tensor:
    v = v & 0x49249249
    v = (v | (v >> 2)) & 0xC30C30C3
    v = (v | (v >> 4)) & 0x0F00F00F
    v = (v | (v >> 8)) & 0xFF0000FF
    return (v | (v >> 16)) & 0x0000FFFF


def _morton(coords: Tensor) -> Tensor:
    c = coords.long()
    return _expand_bits(c[..., 0]) | (_expand_bits(c[..., 1]) << 1) | (_expand_bits(c[..., 2]) << 2)


def morton3D(coords: Tensor) -> Tensor:
    """Morton code of integer cell coordinates [N, 3] (x → bit 3k, y → 3k+1, z → 3k+2)."""
    return _morton(coords).to(torch.int32)


def morton3D_invert(indices: Tensor) -> Tensor:
    """Cell coordinates [N, 3] of Morton codes [N]."""
    i = indices.long()
    return torch.stack([_compact_bits(i), _compact_bits(i >> 1), _compact_bits(i >> 2)], -1).to(torch.int32)


def packbits(grid: Tensor, thresh: float, bitfield: Tensor | None = None) -> Tensor:
    """Occupancy bits of a density grid [C, H³]: bit i of byte n is ``grid_flat[8n + i] > thresh``."""
    bits = (grid.reshape(-1, 8) > thresh).to(torch.uint8)
    weights = (1 << torch.arange(8, device=grid.device, dtype=torch.int32)).to(torch.uint8)
    packed = (bits * weights).sum(-1, dtype=torch.uint8)
    if bitfield is None:
        return packed
    bitfield.copy_(packed)
    return bitfield


def _occupancy(o: Tensor, d: Tensor, inv_d: Tensor, t: Tensor, dt: Tensor, bound: float, bitfield: Tensor,
               C: int, H: int) -> tuple[Tensor, Tensor, Tensor]:
    """The shared lookup of both marchers at parameter t: (position [R,3], occupied [R], end of the
    current empty cell in t [R], meaningful only where the cell is empty)."""
    p = (o + t[:, None] * d).clamp(-bound, bound)
    _, pos_level = torch.frexp(p.abs().amax(-1))
    _, dt_level = torch.frexp(dt * H * 0.5)
    level = torch.maximum(pos_level, dt_level).clamp(0, C - 1)
    mip_bound = torch.exp2(level.float()).clamp(max=bound)
    mip_rbound = 1 / mip_bound
    cell = (0.5 * (p * mip_rbound[:, None] + 1) * H).clamp(0, H - 1).to(torch.int32)
    index = level.long() * H**3 + _morton(cell)
    occupied = ((bitfield[index >> 3].long() >> (index & 7)) & 1).bool()
    rH = float(np.float32(1) / np.float32(H))
    edge = ((cell.float() + 0.5) + 0.5 * torch.copysign(torch.ones_like(d), d)) * rH * 2 - 1
    t_axis = (edge * mip_bound[:, None] - p) * inv_d
    nearest = torch.fmin(t_axis[:, 0], torch.fmin(t_axis[:, 1], t_axis[:, 2]))
    return p, occupied, t + torch.fmax(torch.zeros_like(nearest), nearest)


def _march(o: Tensor, d: Tensor, t: Tensor, far: Tensor, limit: int, bound: float, bitfield: Tensor, C: int, H: int,
           dt_gamma: float, max_steps: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """March every ray from t until it reaches ``far`` or has ``limit`` samples.

    Each loop iteration moves every live ray by one step clampdt(t). A ray either looks up the grid at t
    (occupied: emit a sample; empty: remember where the cell ends) or is still crossing an empty cell, which
    the kernels also do in clampdt steps. Returns per-sample ray index [S], position [S,3], step dt [S], gap
    since the previous sample's end [S] (sorted by ray, in marching order) and the per-ray counts [R].
    """
    rays = o.shape[0]
    dt_min, dt_max = step_bounds(C, H, max_steps)
    bitfield = bitfield.to(o.device)
    state = {
        "ray": torch.arange(rays, device=o.device), "o": o, "d": d, "inv_d": 1 / d, "t": t.clone(),
        "far": far, "last": t.clone(), "count": torch.zeros(rays, dtype=torch.long, device=o.device),
        "skip_to": torch.full_like(t, -float("inf")),
    }
    emitted: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    while True:
        live = (state["t"] < state["far"]) & (state["count"] < limit)
        if not bool(live.any()):
            break
        if not bool(live.all()):
            state = {key: value[live] for key, value in state.items()}
        ray, cur = state["ray"], state["t"]
        dt = _clamp_dt(cur, dt_gamma, dt_min, dt_max)
        p, occupied, cell_end = _occupancy(state["o"], state["d"], state["inv_d"], cur, dt, bound, bitfield, C, H)
        looking = cur >= state["skip_to"]
        emit = looking & occupied
        nxt = cur + dt
        if bool(emit.any()):
            emitted.append((ray[emit], p[emit], dt[emit], nxt[emit] - state["last"][emit]))
        state["last"] = torch.where(emit, nxt, state["last"])
        state["count"] = state["count"] + emit
        state["skip_to"] = torch.where(looking & ~occupied, cell_end, state["skip_to"])
        state["t"] = torch.where(nxt > cur, nxt, float("inf"))  # a step too small to move t ends the ray
    if emitted:
        ray, xyz, dt, gap = (torch.cat(parts) for parts in zip(*emitted))
    else:
        ray = torch.zeros(0, dtype=torch.long, device=o.device)
        xyz, dt, gap = o.new_zeros(0, 3), o.new_zeros(0), o.new_zeros(0)
    ray, order = torch.sort(ray, stable=True)
    counts = torch.bincount(ray, minlength=rays)
    return ray, xyz[order], dt[order], gap[order], counts


def _rank_in_ray(ray: Tensor, counts: Tensor) -> Tensor:
    """Position of each sample within its ray, for samples sorted by ray."""
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(ray.numel(), device=ray.device) - starts[ray]


def train_buffer_rows(rays: int, step_counter: Tensor, mean_count: int, align: int, force_all_rays: bool,
                      max_steps: int, buffer_rows: Callable[[int], int] | None) -> tuple[int, int]:
    """(capacity, rows) of a training march's sample buffer, both backends: the original's buffer sized by
    `mean_count` (no read of the counter), else every sample the counter holds, aligned, then `buffer_rows` of that
    if given."""
    capacity = rays * max_steps
    if not force_all_rays and mean_count > 0:
        return round_up(mean_count, align), round_up(mean_count, align)
    size = min(capacity, round_up(int(step_counter[0]), align))
    return capacity, size if buffer_rows is None else buffer_rows(size)


def _start_jitter(t: Tensor, perturb: bool, dt_gamma: float, dt_min: float, dt_max: float) -> Tensor:
    noise = torch.rand_like(t) if perturb else torch.zeros_like(t)
    return t + _clamp_dt(t, dt_gamma, dt_min, dt_max) * noise


# --- training: march all rays, composite with autograd -----------------------------------------------------
def march_rays_train(rays_o: Tensor, rays_d: Tensor, bound: float, density_bitfield: Tensor, C: int, H: int,
                     nears: Tensor, fars: Tensor, step_counter: Tensor | None = None, mean_count: int = -1,
                     perturb: bool = False, align: int = -1, force_all_rays: bool = False, dt_gamma: float = 0.0,
                     max_steps: int = 1024, buffer_rows: Callable[[int], int] | None = None
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Samples in occupied cells for every ray: xyzs [M,3], dirs [M,3], deltas [M,2] = (dt, distance from the
    previous sample's end), rays [N,3] int32 = (ray index, first row, sample count). Rows are in ray order;
    padding rows are zero. A ray whose samples do not fit the buffer keeps its row but gets no samples
    (detectable as ``offset + count > len(xyzs)``). `buffer_rows(rows)`: the buffer's size for `rows` rows of
    samples and alignment, when a caller wants more padding rows (e.g. sizes that repeat)."""
    rays_o, rays_d, nears, fars = _float32(rays_o, rays_d, nears, fars)
    n, device = rays_o.shape[0], rays_o.device
    dt_min, dt_max = step_bounds(C, H, max_steps)
    t0 = _start_jitter(nears, perturb, dt_gamma, dt_min, dt_max)
    ray, xyz, dt, gap, counts = _march(rays_o, rays_d, t0, fars, max_steps, bound, density_bitfield, C, H,
                                       dt_gamma, max_steps)
    if step_counter is None:
        step_counter = torch.zeros(2, dtype=torch.int32, device=device)
    offsets = int(step_counter[0]) + torch.cumsum(counts, 0) - counts
    step_counter[0] += int(counts.sum())
    step_counter[1] += n
    capacity, size = train_buffer_rows(n, step_counter, mean_count, align, force_all_rays, max_steps, buffer_rows)
    fits = (counts > 0) & (offsets + counts <= capacity)
    keep = fits[ray]
    rows = (offsets[ray] + _rank_in_ray(ray, counts))[keep]
    xyzs = torch.zeros(size, 3, device=device)
    dirs = torch.zeros(size, 3, device=device)
    deltas = torch.zeros(size, 2, device=device)
    xyzs[rows] = xyz[keep]
    dirs[rows] = rays_d[ray[keep]]
    deltas[rows] = torch.stack([dt, gap], -1)[keep]
    table = torch.stack([torch.arange(n, device=device), offsets, counts], -1).to(torch.int32)
    return xyzs, dirs, deltas, table


def composite_rays_train(sigmas: Tensor, rgbs: Tensor, deltas: Tensor, rays: Tensor,
                         T_thresh: float = 1e-4) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing per ray segment: weights_sum [N], depth [N] (from the segment start, no
    gradient, as in the kernel), image [N,K] (premultiplied, no background). Samples after the
    transmittance first drops below T_thresh are ignored. Differentiable w.r.t. sigmas and rgbs; half inputs
    are accumulated and returned in float32 (float64 stays float64, for gradcheck)."""
    dtype = torch.promote_types(torch.promote_types(sigmas.dtype, rgbs.dtype), torch.float32)
    sigma_all, color_all, delta_all = sigmas.to(dtype), rgbs.to(dtype), deltas.to(dtype)
    m, n, k = sigma_all.shape[0], rays.shape[0], color_all.shape[-1]
    ids, offsets, counts = rays.long().unbind(-1)
    valid = (counts > 0) & (offsets + counts <= m)
    ids, offsets, counts = ids[valid], offsets[valid], counts[valid]
    width = int(counts.max()) if counts.numel() else 0
    inside = torch.arange(width, device=rays.device) < counts[:, None]
    index = torch.where(inside, offsets[:, None] + torch.arange(width, device=rays.device), 0)
    sigma = torch.where(inside, sigma_all[index], 0)
    step = torch.where(inside, delta_all[index, 0], 0)
    gap = torch.where(inside, delta_all[index, 1], 0)
    alpha = 1 - torch.exp(-sigma * step)
    through = torch.cumprod(1 - alpha, 1)
    before = torch.cat([torch.ones_like(through[:, :1]), through[:, :-1]], 1)
    reached = (before >= T_thresh).detach()
    weight = alpha * before * reached
    color = torch.where(inside[..., None], color_all[index], 0)
    image = (weight[..., None] * color).sum(1)
    depth = (weight.detach() * torch.cumsum(gap, 1)).sum(1)
    zeros = sigma_all.new_zeros(n)
    return (zeros.index_copy(0, ids, weight.sum(1)), zeros.index_copy(0, ids, depth),
            sigma_all.new_zeros(n, k).index_copy(0, ids, image))


# --- inference: a few samples per live ray at a time, compositing in place --------------------------------
def march_rays(n_alive: int, n_step: int, rays_alive: Tensor, rays_t: Tensor, rays_o: Tensor, rays_d: Tensor,
               bound: float, density_bitfield: Tensor, C: int, H: int, nears: Tensor, fars: Tensor, align: int = -1,
               perturb: bool = False, dt_gamma: float = 0.0, max_steps: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
    """Up to n_step samples for each live slot, from its ray's current t: rows [slot·n_step, (slot+1)·n_step);
    unfilled rows stay zero (a zero step marks the end of the ray)."""
    rays_o, rays_d, rays_t, fars = _float32(rays_o, rays_d, rays_t, fars)
    device = rays_o.device
    size = round_up(n_alive * n_step, align)
    ids = rays_alive[:n_alive].long()
    dt_min, dt_max = step_bounds(C, H, max_steps)
    start = _start_jitter(rays_t[ids], perturb, dt_gamma, dt_min, dt_max)
    slot, xyz, dt, gap, counts = _march(rays_o[ids], rays_d[ids], start, fars[ids], n_step, bound, density_bitfield,
                                        C, H, dt_gamma, max_steps)
    rows = slot * n_step + _rank_in_ray(slot, counts)
    xyzs = torch.zeros(size, 3, device=device)
    dirs = torch.zeros(size, 3, device=device)
    deltas = torch.zeros(size, 2, device=device)
    xyzs[rows] = xyz
    dirs[rows] = rays_d[ids[slot]]
    deltas[rows] = torch.stack([dt, gap], -1)
    return xyzs, dirs, deltas


def composite_rays(n_alive: int, n_step: int, rays_alive: Tensor, rays_t: Tensor, sigmas: Tensor, rgbs: Tensor,
                   deltas: Tensor, weights_sum: Tensor, depth: Tensor, image: Tensor, T_thresh: float = 1e-2) -> None:
    """Add each live slot's n_step samples to its ray, in place. A ray ends at a zero step or once the
    transmittance before a sample is below T_thresh: its slot in rays_alive becomes −1; otherwise
    rays_t advances to the end of its last sample. Depth is absolute (t starts at the ray's rays_t)."""
    ids = rays_alive[:n_alive].long()
    sigma = sigmas[: n_alive * n_step].float().reshape(n_alive, n_step)
    color = rgbs[: n_alive * n_step].float().reshape(n_alive, n_step, -1)
    step = deltas[: n_alive * n_step].float().reshape(n_alive, n_step, 2)
    t, ws, d, rgb = rays_t[ids].float(), weights_sum[ids].float(), depth[ids].float(), image[ids].float()
    done = torch.zeros(n_alive, dtype=torch.bool, device=sigma.device)
    for j in range(n_step):
        done = done | (step[:, j, 0] == 0)
        active = ~done
        alpha = 1 - torch.exp(-sigma[:, j] * step[:, j, 0])
        transmit = 1 - ws
        weight = alpha * transmit
        ws = torch.where(active, ws + weight, ws)
        t = torch.where(active, t + step[:, j, 1], t)
        d = torch.where(active, d + weight * t, d)
        rgb = torch.where(active[:, None], rgb + weight[:, None] * color[:, j], rgb)
        done = done | (active & (transmit < T_thresh))
    weights_sum[ids] = ws.to(weights_sum.dtype)
    depth[ids] = d.to(depth.dtype)
    image[ids] = rgb.to(image.dtype)
    rays_t[ids] = torch.where(done, rays_t[ids], t.to(rays_t.dtype))
    rays_alive[:n_alive] = torch.where(done, torch.full_like(ids, -1), ids).to(rays_alive.dtype)
