"""Real spherical harmonics in plain PyTorch (CPU path and oracle of the CUDA kernel).

Convention of tiny-cuda-nn: output l*l + l + m holds Y_l^m for m = -l..l, with the Condon-Shortley phase,
m > 0 from cos(m phi) and m < 0 from sin(|m| phi), orthonormal on the unit sphere (Y_0^0 = 1/sqrt(4 pi)).
Written in Cartesian form, Y_l^m = K_l^m * Q_l^|m|(z) * {Re, Im}((x + i y)^|m|) with Q_l^m = d^m P_l / dz^m,
so every term is a polynomial in x, y, z (inputs are expected to be unit vectors).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

MAX_DEGREE = 8


@functools.lru_cache(maxsize=None)
def sh_coefficients(degree: int) -> tuple[float, ...]:
    """K_l^m including sign and the sqrt(2) of the real basis, indexed like the outputs (l*l + l + m)."""
    coefficients = []
    for l in range(degree):
        for m in range(-l, l + 1):
            a = abs(m)
            k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - a) / math.factorial(l + a))
            coefficients.append(k if m == 0 else (-1) ** a * math.sqrt(2.0) * k)
    return tuple(coefficients)


def legendre_derivatives(z: Tensor, degree: int) -> dict[tuple[int, int], Tensor | float]:
    """Q_l^m(z) = d^m P_l(z) / dz^m for 0 <= m <= l < degree, by the associated Legendre recurrence."""
    q: dict[tuple[int, int], Tensor | float] = {}
    for m in range(degree):
        q[m, m] = float(math.prod(range(1, 2 * m, 2)))  # (2m - 1)!!
        if m + 1 < degree:
            q[m + 1, m] = (2 * m + 1) * z * q[m, m]
        for l in range(m + 2, degree):
            q[l, m] = ((2 * l - 1) * z * q[l - 1, m] - (l + m - 1) * q[l - 2, m]) / (l - m)
    return q


def sh_encode(inputs: Tensor, degree: int) -> Tensor:
    """Real SH basis of degree `degree` (1..8) at `inputs` [B, 3] -> [B, degree**2]; differentiable."""
    if not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"SH degree must be in 1..{MAX_DEGREE}, got {degree}")
    if inputs.dim() != 2 or inputs.shape[1] != 3:
        raise ValueError("sh_encode expects inputs [B, 3]")
    x, y, z = inputs.unbind(dim=1)
    re, im = [torch.ones_like(x)], [torch.zeros_like(x)]  # (x + i y)^m
    for _ in range(1, degree):
        re, im = re + [x * re[-1] - y * im[-1]], im + [x * im[-1] + y * re[-1]]
    q = legendre_derivatives(z, degree)
    k = sh_coefficients(degree)
    columns = []
    for l in range(degree):
        for m in range(-l, l + 1):
            a = abs(m)
            azimuth = re[a] if m >= 0 else im[a]
            columns.append(k[l * l + l + m] * q[l, a] * azimuth)
    return torch.stack(columns, dim=1)
