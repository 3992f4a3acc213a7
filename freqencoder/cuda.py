"""Autograd wrapper of the compiled frequency encoder; same signature as `reference.freq_encode`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .cuda_build import load_extension

PACKAGE_DIR = Path(__file__).resolve().parent


def _extension():
    module, how = load_extension("freqencoder", PACKAGE_DIR)
    if module is None:
        raise RuntimeError(f"the CUDA frequency encoder is unavailable ({how})")
    return module


class _FreqEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, inputs: Tensor, degree: int) -> Tensor:
        ctx.save_for_backward(inputs)
        ctx.degree = degree
        return _extension().freq_encode_forward(inputs, degree)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor):
        (inputs,) = ctx.saved_tensors
        return _extension().freq_encode_backward(grad.float().contiguous(), inputs, ctx.degree), None


def freq_encode(inputs: Tensor, degree: int) -> Tensor:
    """CUDA twin of `reference.freq_encode` (float32)."""
    if degree < 0:
        raise ValueError(f"frequency degree must be >= 0, got {degree}")
    return _FreqEncode.apply(inputs.float().contiguous(), degree)
