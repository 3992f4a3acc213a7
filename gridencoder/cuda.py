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
    """The encoder kernels: the points as given (`step` None, exact input gradient when asked) or the seven points of
    each one's central-difference stencil (table gradient only)."""

    @staticmethod
    def forward(ctx: FunctionCtx, inputs: Tensor, table: Tensor, offsets: Tensor, config: tuple,
                step: float | None) -> Tensor:
        ctx.save_for_backward(inputs, table, offsets)
        ctx.config, ctx.step = config, step
        if step is None:
            return _extension().grid_encode_forward(inputs, table, offsets, *config)
        return _extension().grid_encode_stencil_forward(inputs, table, offsets, *config, step)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor):
        inputs, table, offsets = ctx.saved_tensors
        grad = grad.to(table.dtype).contiguous()
        if ctx.step is not None:
            grad_table = _extension().grid_encode_stencil_backward(grad, inputs, table, offsets, *ctx.config, ctx.step)
            return None, grad_table, None, None, None
        needs_input, needs_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_table, grad_inputs = _extension().grid_encode_backward(
            grad, inputs, table, offsets, *ctx.config, needs_table, needs_input
        )
        return (grad_inputs if needs_input else None), (grad_table if needs_table else None), None, None, None


def _encode(inputs: Tensor, embeddings: Tensor, offsets: Tensor, per_level_scale: float, base_resolution: int,
            gridtype: str, align_corners: bool, interpolation: str, step: float | None) -> Tensor:
    _check_options(gridtype, interpolation)
    if embeddings.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"the CUDA grid encoder needs a float32 or float16 table, got {embeddings.dtype}")
    scales = level_scales(offsets.numel() - 1, float(per_level_scale), int(base_resolution))
    config = (list(scales), gridtype == "hash", bool(align_corners), interpolation == "smoothstep")
    return _GridEncode.apply(
        inputs.float().contiguous(), embeddings.contiguous(), offsets.to(torch.int32).contiguous(), config, step
    )


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
    return _encode(inputs, embeddings, offsets, per_level_scale, base_resolution, gridtype, align_corners,
                   interpolation, None)


def grid_encode_stencil(inputs: Tensor, embeddings: Tensor, offsets: Tensor, per_level_scale: float,
                        base_resolution: int, gridtype: str = "hash", align_corners: bool = False,
                        interpolation: str = "linear", step: float = 0.0) -> Tensor:
    """CUDA twin of `reference.grid_encode_stencil` in one fused kernel per direction: the neighbours' corners that
    are the point's own are gathered once and their gradients summed before one atomic. Positions get no gradient."""
    if inputs.requires_grad:
        raise ValueError("the CUDA grid stencil gives no input gradient; use reference.grid_encode_stencil")
    return _encode(inputs, embeddings, offsets, per_level_scale, base_resolution, gridtype, align_corners,
                   interpolation, float(step))
