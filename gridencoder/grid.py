"""`GridEncoder`: the multi-resolution grid as a module, routed to the CUDA kernels or the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import cuda
from .cuda_build import resolve_backend, use_compiled
from .reference import GRID_TYPES, INTERPOLATIONS, grid_encode, grid_encode_stencil, level_offsets

PACKAGE_DIR = Path(__file__).resolve().parent


class GridEncoder(nn.Module):
    """Multi-resolution grid encoding of points in [-bound, bound]^D (instant-NGP style).

    `gridtype="tiled"` reproduces the original RealFusion grid (dense index modulo the table size, which
    drops z on fine levels); `"hash"` gives instant-NGP hashing. The input derivative is exact.
    """

    def __init__(
        self,
        input_dim: int = 3,
        num_levels: int = 16,
        level_dim: int = 2,
        per_level_scale: float = 2.0,
        base_resolution: int = 16,
        log2_hashmap_size: int = 19,
        desired_resolution: float | None = None,
        gridtype: str = "hash",
        align_corners: bool = False,
        interpolation: str = "linear",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if gridtype not in GRID_TYPES:
            raise ValueError(f"gridtype must be one of {GRID_TYPES}, got {gridtype!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if desired_resolution is not None:
            if num_levels < 2:
                raise ValueError("desired_resolution needs at least two levels")
            per_level_scale = float(np.exp2(np.log2(desired_resolution / base_resolution) / (num_levels - 1)))
        self.input_dim = input_dim
        self.num_levels = num_levels
        self.level_dim = level_dim
        self.per_level_scale = float(per_level_scale)
        self.base_resolution = base_resolution
        self.log2_hashmap_size = log2_hashmap_size
        self.gridtype = gridtype
        self.align_corners = align_corners
        self.interpolation = interpolation
        self.output_dim = num_levels * level_dim

        offsets = level_offsets(
            input_dim, num_levels, level_dim, base_resolution, self.per_level_scale, log2_hashmap_size, align_corners
        )
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int32))
        self.embeddings = nn.Parameter(torch.empty(offsets[-1], level_dim).uniform_(-1e-4, 1e-4))

        self._requested = backend
        self._ext = resolve_backend(backend, "gridencoder", PACKAGE_DIR)
        self.backend_name = "cuda" if self._ext is not None else "torch"

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, levels={self.num_levels}, level_dim={self.level_dim}, "
            f"base_resolution={self.base_resolution}, per_level_scale={self.per_level_scale:.6f}, "
            f"table={tuple(self.embeddings.shape)}, gridtype={self.gridtype}, "
            f"align_corners={self.align_corners}, interpolation={self.interpolation}, backend={self.backend_name}"
        )

    def forward(self, inputs: Tensor, bound: float = 1.0) -> Tensor:
        """Encode `inputs` [..., D] in [-bound, bound]; points outside encode to 0. Returns [..., L*C]."""
        u, table = self._prepared(inputs, bound)
        encode = cuda.grid_encode if use_compiled(self._ext, self._requested, u) else grid_encode
        out = encode(u, table, self.offsets, *self._config())
        return out.reshape(*inputs.shape[:-1], self.output_dim)

    def stencil(self, inputs: Tensor, bound: float, step: float) -> Tensor:
        """Features [7, ..., L*C] of `inputs` [..., 3] and of their six central-difference neighbours at +-`step`
        (world units) along x, y and z (order: the point, +x, +y, +z, -x, -y, -z; neighbours clamped to the cube).

        The same values as encoding the seven points one by one; on CUDA one fused kernel shares the neighbours'
        corners with the point's, which makes finite-difference normals cheaper (positions get no gradient there)."""
        if self.input_dim != 3:
            raise ValueError(f"the central-difference stencil needs 3-D inputs, the encoder takes {self.input_dim}")
        u, table = self._prepared(inputs, bound)
        fused = use_compiled(self._ext, self._requested, u) and not u.requires_grad
        encode = cuda.grid_encode_stencil if fused else grid_encode_stencil
        out = encode(u, table, self.offsets, *self._config(), step=step / (2 * bound))
        return out.reshape(7, *inputs.shape[:-1], self.output_dim)

    def _prepared(self, inputs: Tensor, bound: float) -> tuple[Tensor, Tensor]:
        """Positions mapped to [0, 1] as [B, D] fp32 (fp64 kept), and the table as the kernels read it."""
        u = ((inputs + bound) / (2 * bound)).reshape(-1, self.input_dim)
        if u.dtype != torch.float64:
            u = u.float()  # positions need fp32 even under autocast
        table = self.embeddings
        if u.is_cuda and self.level_dim % 2 == 0 and torch.is_autocast_enabled("cuda"):
            table = table.half()  # half tables halve the gather traffic; pairs keep the atomics fast
        return u, table

    def _config(self) -> tuple:
        return (self.per_level_scale, self.base_resolution, self.gridtype, self.align_corners, self.interpolation)
