"""Autograd wrapper of the compiled grid encoder; same signature as `reference.grid_encode`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .cuda_build import load_extension
from .reference import _check_options, level_scales

PACKAGE_DIR = Path(__file__).resolve().parent


def _extension():
    module, how = load_extension("gridencoder", PACKAGE_DIR)
    if module is None:
        raise RuntimeError(f"the CUDA grid encoder is unavailable ({how})")
    return module


class _GridEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, inputs: Tensor, table: Tensor, offsets: Tensor, config: tuple) -> Tensor:
        ctx.save_for_backward(inputs, table, offsets)
        ctx.config = config
        return _extension().grid_encode_forward(inputs, table, offsets, *config)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor):
        inputs, table, offsets = ctx.saved_tensors
        needs_input, needs_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_table, grad_inputs = _extension().grid_encode_backward(
            grad.to(table.dtype).contiguous(), inputs, table, offsets, *ctx.config, needs_table, needs_input
        )
        return (grad_inputs if needs_input else None), (grad_table if needs_table else None), None, None


class _GridEncodeStencil(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, inputs: Tensor, table: Tensor, offsets: Tensor, config: tuple) -> Tensor:
        ctx.save_for_backward(inputs, table, offsets)
        ctx.config = config
        return _extension().grid_encode_stencil_forward(inputs, table, offsets, *config)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor):
        inputs, table, offsets = ctx.saved_tensors
        grad_table = _extension().grid_encode_stencil_backward(grad.to(table.dtype).contiguous(), inputs, table,
                                                               offsets, *ctx.config)
        return None, grad_table, None, None


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
    """CUDA twin of `reference.grid_encode`: float32 positions, float32 or float16 table (kept as given).

    The input gradient (exact in every dimension) is computed only when `inputs` requires grad.
    """
    _check_options(gridtype, interpolation)
    if embeddings.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"the CUDA grid encoder needs a float32 or float16 table, got {embeddings.dtype}")
    scales = level_scales(offsets.numel() - 1, float(per_level_scale), int(base_resolution))
    config = (list(scales), gridtype == "hash", bool(align_corners), interpolation == "smoothstep")
    return _GridEncode.apply(
        inputs.float().contiguous(), embeddings.contiguous(), offsets.to(torch.int32).contiguous(), config
    )


def grid_encode_stencil(
    inputs: Tensor,
    embeddings: Tensor,
    offsets: Tensor,
    per_level_scale: float,
    base_resolution: int,
    gridtype: str = "hash",
    align_corners: bool = False,
    interpolation: str = "linear",
    step: float = 0.0,
) -> Tensor:
    """CUDA twin of `reference.grid_encode_stencil` in one fused kernel per direction: the neighbours' corners that
    are the point's own are gathered once and their gradients summed before one atomic. Positions get no gradient."""
    _check_options(gridtype, interpolation)
    if inputs.requires_grad:
        raise ValueError("the CUDA grid stencil gives no input gradient; use reference.grid_encode_stencil")
    if embeddings.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"the CUDA grid encoder needs a float32 or float16 table, got {embeddings.dtype}")
    scales = level_scales(offsets.numel() - 1, float(per_level_scale), int(base_resolution))
    config = (list(scales), gridtype == "hash", bool(align_corners), interpolation == "smoothstep", float(step))
    return _GridEncodeStencil.apply(
        inputs.float().contiguous(), embeddings.contiguous(), offsets.to(torch.int32).contiguous(), config
    )
