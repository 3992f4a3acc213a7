"""Multi-resolution grid encoding in plain PyTorch.

This is the CPU path of the project and the oracle the CUDA kernels are tested against. It reproduces the
original kernel's table indexing bit for bit (per-level float32 scale, tiled strides that stop growing once
they pass the table size, hashing primes, uint32 wrap-around), while the input derivative comes from
autograd and is therefore correct for every dimension.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

GRID_TYPES = ("hash", "tiled")
INTERPOLATIONS = ("linear", "smoothstep")
HASH_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
UINT32 = 0xFFFFFFFF


def level_offsets(
    input_dim: int,
    num_levels: int,
    level_dim: int,
    base_resolution: int,
    per_level_scale: float,
    log2_hashmap_size: int,
    align_corners: bool,
) -> list[int]:
    """Row offsets of each level in the shared table (length L+1).

    A level holds one row per grid vertex, capped at 2^log2_hashmap_size, rounded up to a multiple of 8
    so that every level starts on an aligned row.
    """
    if min(input_dim, num_levels, level_dim, base_resolution) < 1:
        raise ValueError("grid encoder sizes must be positive")
    cap = 2**log2_hashmap_size
    offsets = [0]
    for level in range(num_levels):
        resolution = math.ceil(base_resolution * per_level_scale**level)
        vertices = (resolution if align_corners else resolution + 1) ** input_dim
        rows = min(cap, vertices)
        offsets.append(offsets[-1] + -(-rows // 8) * 8)
    return offsets


@functools.lru_cache(maxsize=None)
def level_scales(num_levels: int, per_level_scale: float, base_resolution: int) -> tuple[float, ...]:
    """Per-level `scale = 2^(l*S) * H0 - 1` evaluated in float32 exactly as the original kernel did.

    S = log2(per_level_scale) is rounded to float32, l*S is a float32 product and the exponential is a
    float32 exp2, so the grid resolution R = ceil(scale) + 1 can exceed the Python-side resolution by one
    (level 15 of the RealFusion grid: scale 1535.0004, R = 1537). The multiply-subtract is rounded once,
    as the fused multiply-add of the compiled kernel does. Both backends use these values.
    """
    s = np.float32(np.log2(per_level_scale))
    powers = np.exp2(np.arange(num_levels, dtype=np.float32) * s)
    scales = (powers.astype(np.float64) * base_resolution - 1.0).astype(np.float32)
    return tuple(float(v) for v in scales)


def level_resolution(scale: float) -> int:
    """Grid vertices per axis that the index strides use at a level (the kernel's R)."""
    return math.ceil(scale) + 1


def corner_index(cells: Tensor, corner_bits: Tensor, resolution: int, table_size: int, hashed: bool,
                 align_corners: bool) -> Tensor:
    """Row (within the level) [B, 2^D] of the corners of the cells whose lower vertices are `cells` [B, D] (corner k
    takes the upper vertex along d iff corner_bits[k, d] is 1), as uint32 arithmetic would give it.

    Dense row-major index while the stride still fits in the table; a stride that outgrows the table stops
    the accumulation, so tiled grids silently drop the remaining (z) dimensions. Hashed grids switch to the
    XOR-of-primes hash in that case. The result is reduced modulo the table size. Each dimension's term is computed
    once per cell for its lower and upper vertex and then combined per corner (sums modulo 2^32 and XORs do not
    depend on the order).
    """
    step = resolution if align_corners else resolution + 1
    strides, stride = [], 1
    for _ in range(cells.shape[-1]):
        if stride > table_size:
            break
        strides.append(stride)
        stride = (stride * step) & UINT32
    if hashed and stride > table_size:
        index = None
        for d in range(cells.shape[-1]):
            ends = torch.stack([cells[:, d], cells[:, d] + 1], dim=1) * HASH_PRIMES[d] & UINT32  # [B, 2]
            term = ends[:, corner_bits[:, d]]  # [B, 2^D]
            index = term if index is None else index ^ term
    else:
        base = sum(cells[:, d] * s for d, s in enumerate(strides))  # below 2^46: no int64 overflow
        offsets = (corner_bits[:, :len(strides)] * torch.tensor(strides, device=cells.device)).sum(-1)
        index = (base[:, None] + offsets) & UINT32
    if table_size & (table_size - 1) == 0:  # the hashed levels' tables: a mask, much cheaper than a division
        return index & (table_size - 1)
    return index % table_size


def _check_options(gridtype: str, interpolation: str) -> None:
    if gridtype not in GRID_TYPES:
        raise ValueError(f"gridtype must be one of {GRID_TYPES}, got {gridtype!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")


def grid_encode(
    inputs: Tensor,
    embeddings: Tensor,
    offsets: Tensor,
    per_level_scale: float,
    base_resolution: int,
    gridtype: str = "hash",
    align_corners: bool = False,
    interpolation: str = "linear",
) -> Tensor:
    """Encode points `inputs` [B, D] in [0, 1] with the level tables stacked in `embeddings` [E, C].

    Returns [B, L*C] in the dtype of `embeddings`, level l in columns l*C .. l*C+C-1. A point with any
    coordinate outside [0, 1] encodes to 0. Differentiable w.r.t. inputs and embeddings.
    """
    _check_options(gridtype, interpolation)
    if inputs.dim() != 2 or embeddings.dim() != 2:
        raise ValueError("grid_encode expects inputs [B, D] and embeddings [E, C]")
    batch, dim = inputs.shape
    rows = [int(v) for v in offsets.tolist()]
    dtype = torch.promote_types(torch.promote_types(inputs.dtype, embeddings.dtype), torch.float32)

    inside = ((inputs >= 0) & (inputs <= 1)).all(dim=1, keepdim=True)
    u = torch.where(inside, inputs, torch.zeros((), dtype=inputs.dtype, device=inputs.device)).to(dtype)
    bits = torch.arange(2**dim, device=inputs.device)[:, None] >> torch.arange(dim, device=inputs.device)
    corner_bits = bits & 1  # [2^D, D] 0/1: corner k takes the upper vertex along d iff bit d of k
    shift = 0.0 if align_corners else 0.5

    scales = level_scales(len(rows) - 1, float(per_level_scale), int(base_resolution))
    features = []
    for level, scale in enumerate(scales):
        pos = u * scale + shift
        cell = torch.floor(pos)
        frac = pos - cell
        if interpolation == "smoothstep":
            frac = frac * frac * (3.0 - 2.0 * frac)
        ends = torch.stack([1.0 - frac, frac], dim=1)  # [B, 2, D]: the lower and upper vertex's factor per axis
        weights = ends[:, corner_bits[:, 0], 0]  # [B, 2^D]
        for d in range(1, dim):  # explicit products: prod()'s backward takes a slow path on exact zeros
            weights = weights * ends[:, corner_bits[:, d], d]
        table_size = rows[level + 1] - rows[level]
        index = corner_index(cell.long(), corner_bits, level_resolution(scale), table_size, gridtype == "hash",
                             align_corners)
        values = embeddings[rows[level] + index].to(dtype)  # [B, 2^D, C]
        features.append((weights[..., None] * values).sum(dim=1))
    out = torch.cat(features, dim=1) if features else u.new_zeros(batch, 0)
    return torch.where(inside, out, torch.zeros((), dtype=dtype, device=out.device)).to(embeddings.dtype)


def stencil_points(inputs: Tensor, step: float) -> Tensor:
    """The seven points of central differences at each of `inputs` [B, 3] in [0, 1]: the point, then +step along
    x, y, z and -step along x, y, z, each neighbour clamped to [0, 1] ([7, B, 3]; the point itself is not clamped)."""
    shifts = torch.eye(inputs.shape[-1], dtype=inputs.dtype, device=inputs.device) * step
    neighbours = (inputs[None] + torch.cat([shifts, -shifts])[:, None]).clamp(0, 1)
    return torch.cat([inputs[None], neighbours])


def grid_encode_stencil(inputs: Tensor, embeddings: Tensor, offsets: Tensor, per_level_scale: float,
                        base_resolution: int, gridtype: str = "hash", align_corners: bool = False,
                        interpolation: str = "linear", step: float = 0.0) -> Tensor:
    """`grid_encode` of the seven `stencil_points` of every point of `inputs` [B, 3]: [7, B, L*C]."""
    points = stencil_points(inputs, step)
    out = grid_encode(points.reshape(-1, inputs.shape[-1]), embeddings, offsets, per_level_scale, base_resolution,
                      gridtype, align_corners, interpolation)
    return out.reshape(points.shape[0], inputs.shape[0], -1)
