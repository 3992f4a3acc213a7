"""Autograd wrapper of the compiled spherical-harmonics encoder; same signature as `reference.sh_encode`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .cuda_build import load_extension
from .reference import MAX_DEGREE, sh_coefficients

PACKAGE_DIR = Path(__file__).resolve().parent


def _extension():
    module, how = load_extension("shencoder", PACKAGE_DIR)
    if module is None:
        raise RuntimeError(f"the CUDA SH encoder is unavailable ({how})")
    return module


class _SHEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, inputs: Tensor, degree: int) -> Tensor:
        ctx.save_for_backward(inputs)
        ctx.degree = degree
        return _extension().sh_encode_forward(inputs, degree, list(sh_coefficients(degree)))

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor):
        (inputs,) = ctx.saved_tensors
        coefficients = list(sh_coefficients(ctx.degree))
        return _extension().sh_encode_backward(grad.float().contiguous(), inputs, ctx.degree, coefficients), None


def sh_encode(inputs: Tensor, degree: int) -> Tensor:
    """CUDA twin of `reference.sh_encode` (float32); the input gradient is computed analytically."""
    if not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"SH degree must be in 1..{MAX_DEGREE}, got {degree}")
    return _SHEncode.apply(inputs.float().contiguous(), degree)
