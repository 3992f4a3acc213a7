"""PyTorch references of the grid, spherical-harmonics and frequency encoders (CPU).

Grid values are checked against numbers worked out by hand and against a scalar per-point oracle written
from the kernel contract; SH against closed-form formulas and an orthonormality quadrature; frequencies
against explicit sin/cos. Every op is gradchecked in float64.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from freqencoder import FreqEncoder
from freqencoder.reference import freq_encode
from gridencoder import GridEncoder
from gridencoder.reference import grid_encode, level_offsets, level_scales
from shencoder import SHEncoder
from shencoder.reference import sh_encode

warnings.filterwarnings("ignore", message=".*CUDA extension unavailable.*")

PRIMES = (1, 2654435761, 805459861)


# ----------------------------------------------------------------------------------------------- grid: oracle
def oracle_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    """The kernel's float32 scale for one level, step by step in numpy float32."""
    s = np.float32(np.log2(per_level_scale))
    power = np.exp2(np.float32(level) * s)
    return float(np.float32(np.float64(power) * base_resolution - 1.0))


def oracle_point(u, table, offsets, per_level_scale, base_resolution, gridtype, align_corners, interpolation):
    """One point, every level, with plain Python scalars: the contract of kernels.md read literally."""
    dim, channels = len(u), table.shape[1]
    out = []
    for level in range(len(offsets) - 1):
        if any(c < 0 or c > 1 for c in u):
            out += [0.0] * channels
            continue
        scale = oracle_scale(level, per_level_scale, base_resolution)
        res = math.ceil(scale) + 1
        size = offsets[level + 1] - offsets[level]
        pos = [c * scale + (0.0 if align_corners else 0.5) for c in u]
        grid = [math.floor(p) for p in pos]
        frac = [p - g for p, g in zip(pos, grid)]
        if interpolation == "smoothstep":
            frac = [f * f * (3 - 2 * f) for f in frac]
        acc = [0.0] * channels
        for corner in itertools.product((0, 1), repeat=dim):
            weight = 1.0
            for d in range(dim):
                weight *= frac[d] if corner[d] else 1 - frac[d]
            vertex = [g + c for g, c in zip(grid, corner)]
            index, stride, d = 0, 1, 0
            while d < dim and stride <= size:
                index = (index + vertex[d] * stride) % 2**32
                stride = (stride * (res if align_corners else res + 1)) % 2**32
                d += 1
            if gridtype == "hash" and stride > size:
                index = 0
                for d in range(dim):
                    index ^= (vertex[d] * PRIMES[d]) % 2**32
            row = offsets[level] + index % size
            for ch in range(channels):
                acc[ch] += weight * float(table[row, ch])
        out += acc
    return out


def make_grid(dim, levels, channels, base, scale, log2_size, align_corners, seed=0):
    offsets = level_offsets(dim, levels, channels, base, scale, log2_size, align_corners)
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(offsets[-1], channels, generator=gen, dtype=torch.float64)
    return table, offsets


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("gridtype", ["hash", "tiled"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_grid_matches_scalar_oracle(dim, gridtype, align_corners, interpolation):
    # 3 levels from resolution 3 with a 2^6-row cap: dense, wrapped and hashed/dropped levels all occur
    table, offsets = make_grid(dim, 3, 2, 3, 1.7, 6, align_corners)
    gen = torch.Generator().manual_seed(1)
    u = torch.rand(40, dim, generator=gen, dtype=torch.float64) * 1.2 - 0.1  # some points outside [0, 1]
    u[0] = 0.0
    u[1] = 1.0
    got = grid_encode(u, table, torch.tensor(offsets), 1.7, 3, gridtype, align_corners, interpolation)
    want = torch.tensor(
        [oracle_point(p.tolist(), table, offsets, 1.7, 3, gridtype, align_corners, interpolation) for p in u],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------- grid: by hand
def one_level(dim, base, log2_size, align_corners, table_fn):
    offsets = level_offsets(dim, 1, 2, base, 2.0, log2_size, align_corners)
    rows = torch.arange(offsets[-1], dtype=torch.float64)
    return torch.stack([table_fn(rows), -2 * table_fn(rows)], dim=1), torch.tensor(offsets)


def test_grid_2d_tiled_linear_by_hand():
    # resolution 4 -> scale 3, 5x5 vertices (25 rows, padded to 32); u=(0.3, 0.6) -> pos (1.4, 2.3)
    table, offsets = one_level(2, 4, 10, False, lambda i: i)
    assert offsets.tolist() == [0, 32]
    out = grid_encode(torch.tensor([[0.3, 0.6]], dtype=torch.float64), table, offsets, 2.0, 4, "tiled")
    # corners (1,2)->11, (2,2)->12, (1,3)->16, (2,3)->17 with weights from f = (0.4, 0.3)
    want = 0.6 * 0.7 * 11 + 0.4 * 0.7 * 12 + 0.6 * 0.3 * 16 + 0.4 * 0.3 * 17
    torch.testing.assert_close(out, torch.tensor([[want, -2 * want]], dtype=torch.float64))
    assert want == pytest.approx(12.9)


def test_grid_2d_smoothstep_by_hand():
    table, offsets = one_level(2, 4, 10, False, lambda i: i * i)
    out = grid_encode(torch.tensor([[0.3, 0.6]], dtype=torch.float64), table, offsets, 2.0, 4, "tiled",
                      interpolation="smoothstep")
    sx, sy = 0.4 * 0.4 * (3 - 0.8), 0.3 * 0.3 * (3 - 0.6)
    want = (1 - sx) * (1 - sy) * 121 + sx * (1 - sy) * 144 + (1 - sx) * sy * 256 + sx * sy * 289
    torch.testing.assert_close(out[0, 0].item(), want)


def test_grid_2d_align_corners_by_hand():
    # align_corners: 4x4 vertices (16 rows), scale 3, no half-cell shift: pos (0.9, 1.8), y stride 4
    table, offsets = one_level(2, 4, 10, True, lambda i: i * i)
    assert offsets.tolist() == [0, 16]
    out = grid_encode(torch.tensor([[0.3, 0.6]], dtype=torch.float64), table, offsets, 2.0, 4, "hash",
                      align_corners=True)
    want = 0.1 * 0.2 * 16 + 0.9 * 0.2 * 25 + 0.1 * 0.8 * 64 + 0.9 * 0.8 * 81
    torch.testing.assert_close(out[0, 0].item(), want)


def test_grid_2d_hash_by_hand():
    # 25 vertices but an 8-row table: the y stride (5) still fits, the next (25) does not -> hashed
    table, offsets = one_level(2, 4, 3, False, lambda i: i)
    assert offsets.tolist() == [0, 8]
    out = grid_encode(torch.tensor([[0.3, 0.6]], dtype=torch.float64), table, offsets, 2.0, 4, "hash")
    row = {(x, y): (x ^ (y * 2654435761 % 2**32)) % 8 for x in (1, 2) for y in (2, 3)}
    assert row == {(1, 2): 3, (2, 2): 0, (1, 3): 2, (2, 3): 1}
    want = 0.42 * 3 + 0.28 * 0 + 0.18 * 2 + 0.12 * 1
    torch.testing.assert_close(out[0, 0].item(), want)
    # the tiled grid of the same size wraps the dense index instead
    tiled = grid_encode(torch.tensor([[0.3, 0.6]], dtype=torch.float64), table, offsets, 2.0, 4, "tiled")
    want_tiled = 0.42 * (11 % 8) + 0.28 * (12 % 8) + 0.18 * (16 % 8) + 0.12 * (17 % 8)
    torch.testing.assert_close(tiled[0, 0].item(), want_tiled)


def test_grid_3d_by_hand():
    # resolution 2 -> scale 1, 3x3x3 vertices; u=(0.25, 0.5, 0.75) -> pos (0.75, 1.0, 1.25)
    table, offsets = one_level(3, 2, 10, False, lambda i: i * i)
    out = grid_encode(torch.tensor([[0.25, 0.5, 0.75]], dtype=torch.float64), table, offsets, 2.0, 2, "tiled")
    # f_y = 0, so only y = 1 corners count; index = x + 3y + 9z
    want = 0.25 * 0.75 * 12**2 + 0.75 * 0.75 * 13**2 + 0.25 * 0.25 * 21**2 + 0.75 * 0.25 * 22**2
    torch.testing.assert_close(out[0, 0].item(), want)
    # with an 8-row table, stride 9 overflows after y: hashed over (x, y, z) ...
    table8, offsets8 = one_level(3, 2, 3, False, lambda i: i * i)
    hashed = grid_encode(torch.tensor([[0.25, 0.5, 0.75]], dtype=torch.float64), table8, offsets8, 2.0, 2, "hash")
    corners = {(0, 1, 1): 0.25 * 0.75, (1, 1, 1): 0.75 * 0.75, (0, 1, 2): 0.25 * 0.25, (1, 1, 2): 0.75 * 0.25}
    want_hash = sum(
        w * (((x * 1) ^ (y * 2654435761 % 2**32) ^ (z * 805459861 % 2**32)) % 8) ** 2
        for (x, y, z), w in corners.items()
    )
    torch.testing.assert_close(hashed[0, 0].item(), want_hash)
    # ... while the tiled grid ignores z: index (x + 3y) mod 8
    tiled = grid_encode(torch.tensor([[0.25, 0.5, 0.75]], dtype=torch.float64), table8, offsets8, 2.0, 2, "tiled")
    want_tiled = sum(w * ((x + 3 * y) % 8) ** 2 for (x, y, z), w in corners.items())
    torch.testing.assert_close(tiled[0, 0].item(), want_tiled)


# ----------------------------------------------------------------------------------------------- grid: layout
REALFUSION = dict(input_dim=3, num_levels=16, level_dim=2, base_resolution=16, log2_hashmap_size=16,
                  desired_resolution=1536, gridtype="tiled", backend="torch")
REALFUSION_ROWS = [4920, 12168, 29792] + [65536] * 13
REALFUSION_RES = [16, 22, 30, 40, 55, 74, 100, 135, 183, 248, 336, 455, 617, 836, 1134, 1536]


def test_realfusion_table_layout():
    enc = GridEncoder(**REALFUSION)
    assert enc.per_level_scale == pytest.approx(1.3556620, abs=1e-7)
    offsets = enc.offsets.tolist()
    assert enc.offsets.dtype == torch.int32
    assert [b - a for a, b in zip(offsets, offsets[1:])] == REALFUSION_ROWS
    assert offsets[-1] == 898_848 and tuple(enc.embeddings.shape) == (898_848, 2)
    assert enc.embeddings.numel() == 1_797_696 and enc.output_dim == 32
    assert enc.embeddings.abs().max() <= 1e-4
    assert [math.ceil(16 * enc.per_level_scale**l) for l in range(16)] == REALFUSION_RES
    # the kernel-side float32 resolution equals the Python one except at level 15
    kernel_res = [math.ceil(s) + 1 for s in level_scales(16, enc.per_level_scale, 16)]
    assert kernel_res == REALFUSION_RES[:15] + [1537]
    assert level_scales(16, enc.per_level_scale, 16)[15] == pytest.approx(1535.0004, abs=1e-4)


def test_realfusion_fine_levels_drop_z_and_level15_uses_stride_1538():
    enc = GridEncoder(**REALFUSION)
    with torch.no_grad():
        enc.embeddings.copy_(torch.randn(enc.embeddings.shape, generator=torch.Generator().manual_seed(3)))
    a = torch.tensor([[0.1, -0.2, 0.3]])
    b = torch.tensor([[0.1, -0.2, -0.45]])  # same x, y; different z
    fa, fb = enc(a, bound=0.75).view(16, 2), enc(b, bound=0.75).view(16, 2)
    diff = (fa - fb).abs().amax(dim=1)  # z weights still sum to 1 only up to rounding
    assert (diff[:10] > 1e-3).all() and (diff[10:] < 1e-6).all()

    # level 15 reads row (x + 1538 y) mod 65536: store each row's own index and interpolate by hand
    rows = torch.arange(65536, dtype=torch.float64)
    table = torch.zeros(898_848, 2, dtype=torch.float64)
    table[-65536:, 0] = rows
    table[-65536:, 1] = rows.square()
    u = torch.tensor([[0.61, 0.37, 0.9]], dtype=torch.float64)
    out = grid_encode(u, table, enc.offsets, enc.per_level_scale, 16, "tiled")[0, 30:]
    scale = level_scales(16, enc.per_level_scale, 16)[15]
    px, py = (u[0, :2] * scale + 0.5).tolist()
    gx, gy, fx, fy = math.floor(px), math.floor(py), px % 1, py % 1
    want = [0.0, 0.0]
    for cx, cy in itertools.product((0, 1), repeat=2):
        w = (fx if cx else 1 - fx) * (fy if cy else 1 - fy)
        row = (gx + cx + 1538 * (gy + cy)) % 65536
        want[0] += w * row
        want[1] += w * row**2
    torch.testing.assert_close(out, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-6)


def test_level_offsets_align_corners_and_rounding():
    assert level_offsets(2, 2, 1, 4, 2.0, 10, True) == [0, 16, 80]  # 4^2, 8^2
    assert level_offsets(2, 2, 1, 4, 2.0, 10, False) == [0, 32, 120]  # 25 -> 32, 81 -> 88
    assert level_offsets(3, 1, 1, 16, 2.0, 5, False) == [0, 32]  # capped
    assert level_offsets(2, 1, 1, 2, 2.0, 10, False) == [0, 16]  # 9 -> 16


def test_out_of_range_points_encode_to_zero():
    enc = GridEncoder(input_dim=3, num_levels=4, level_dim=2, base_resolution=4, log2_hashmap_size=8,
                      backend="torch")
    with torch.no_grad():
        enc.embeddings.fill_(1.0)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.76, 0.0, 0.0], [0.0, -0.751, 0.0], [0.75, -0.75, 0.75], [0, 0, 9.0]])
    out = enc(x, bound=0.75)
    assert out[[1, 2, 4]].abs().max() == 0
    torch.testing.assert_close(out[[0, 3]], torch.ones(2, 8))  # partition of unity inside
    u = torch.tensor([[0.5, float("inf")], [float("nan"), 0.5]])
    table = torch.ones(16, 1)
    assert grid_encode(u, table, torch.tensor([0, 16]), 2.0, 2).abs().max() == 0


def test_grid_module_shapes_dtype_and_backend():
    enc = GridEncoder(input_dim=2, num_levels=3, level_dim=4, base_resolution=4, log2_hashmap_size=6,
                      backend="torch")
    x = torch.rand(5, 7, 2) * 2 - 1
    assert enc(x).shape == (5, 7, 12) and enc.backend_name == "torch"
    flat = grid_encode((x.reshape(-1, 2) + 1) / 2, enc.embeddings, enc.offsets, 2.0, 4)
    torch.testing.assert_close(enc(x).reshape(-1, 12), flat)
    half = grid_encode((x.reshape(-1, 2) + 1) / 2, enc.embeddings.half(), enc.offsets, 2.0, 4)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), flat, rtol=1e-2, atol=1e-6)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="unavailable"):
            GridEncoder(backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        GridEncoder(backend="tpu")
    with pytest.raises(ValueError):
        GridEncoder(gridtype="dense", backend="torch")


# ----------------------------------------------------------------------------------------------- grid: grads
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("gridtype,align_corners,interpolation", [
    ("hash", False, "linear"), ("tiled", True, "linear"), ("hash", True, "smoothstep"), ("tiled", False, "smoothstep"),
])
def test_grid_gradcheck(dim, gridtype, align_corners, interpolation):
    table, offsets = make_grid(dim, 3, 2, 3, 1.7, 5, align_corners, seed=4)
    table.requires_grad_(True)
    gen = torch.Generator().manual_seed(5)
    u = (torch.rand(6, dim, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    off = torch.tensor(offsets)

    def fn(points, emb):
        return grid_encode(points, emb, off, 1.7, 3, gridtype, align_corners, interpolation)

    assert torch.autograd.gradcheck(fn, (u, table), eps=1e-6, atol=1e-7)


def test_grid_input_derivative_is_correct_for_every_dimension():
    # a table equal to the vertex's own z index: the encoding grows linearly with z (fixes the y/z = 0 bug)
    offsets = level_offsets(3, 1, 1, 4, 2.0, 10, False)
    rows = torch.arange(offsets[-1], dtype=torch.float64)
    table = torch.stack([rows // 25, (rows // 5) % 5], dim=1)  # features (z, y) of vertex x + 5y + 25z
    u = torch.tensor([[0.3, 0.4, 0.6]], dtype=torch.float64, requires_grad=True)
    out = grid_encode(u, table, torch.tensor(offsets), 2.0, 4, "tiled")
    (gz,) = torch.autograd.grad(out[0, 0], u, retain_graph=True)
    (gy,) = torch.autograd.grad(out[0, 1], u)
    torch.testing.assert_close(gz, torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64))  # d(pos_z)/du = scale
    torch.testing.assert_close(gy, torch.tensor([[0.0, 3.0, 0.0]], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- SH
def sh_closed_form(v: torch.Tensor) -> torch.Tensor:
    """Degrees 0..3 of the real SH basis (Condon-Shortley phase), from the textbook table."""
    x, y, z = v.unbind(1)
    pi = math.pi
    c1 = math.sqrt(3 / (4 * pi))
    c2a, c2b, c2c = math.sqrt(15 / pi) / 2, math.sqrt(5 / pi) / 4, math.sqrt(15 / pi) / 4
    c3a, c3b, c3c, c3d = math.sqrt(35 / (2 * pi)) / 4, math.sqrt(105 / pi) / 2, math.sqrt(21 / (2 * pi)) / 4, math.sqrt(7 / pi) / 4
    cols = [
        torch.full_like(x, 1 / (2 * math.sqrt(pi))),
        -c1 * y, c1 * z, -c1 * x,
        c2a * x * y, -c2a * y * z, c2b * (3 * z * z - 1), -c2a * x * z, c2c * (x * x - y * y),
        -c3a * y * (3 * x * x - y * y), c3b * x * y * z, -c3c * y * (5 * z * z - 1), c3d * z * (5 * z * z - 3),
        -c3c * x * (5 * z * z - 1), c3b / 2 * z * (x * x - y * y), -c3a * x * (x * x - 3 * y * y),
    ]
    return torch.stack(cols, dim=1)


def unit_vectors(n: int, seed: int) -> torch.Tensor:
    v = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def test_sh_matches_closed_form_up_to_degree_4():
    v = unit_vectors(50, 0)
    want = sh_closed_form(v)
    for degree in range(1, 5):
        torch.testing.assert_close(sh_encode(v, degree), want[:, : degree**2], rtol=1e-12, atol=1e-12)
    first = [0.28209479, -0.48860251, 0.48860251, -0.48860251, 1.09254843, -1.09254843, 0.94617470, -1.09254843,
             0.54627422]
    e = torch.eye(3, dtype=torch.float64)
    assert sh_encode(e[2:3], 3)[0, 2].item() == pytest.approx(first[2])
    xy = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64) / math.sqrt(2)
    assert sh_encode(xy, 3)[0, 4].item() == pytest.approx(first[4] / 2)
    assert sh_encode(e[2:3], 3)[0, 6].item() == pytest.approx(first[6] - 0.31539157)
    assert sh_encode(e[0:1], 3)[0, 8].item() == pytest.approx(first[8])


def test_sh_highest_order_terms_follow_the_sign_convention():
    v = unit_vectors(20, 1)
    x, y, z = v.unbind(1)
    out = sh_encode(v, 8)
    c63 = 3 * math.sqrt(715) / (64 * math.sqrt(math.pi))
    c61 = 3 * math.sqrt(385) / (64 * math.sqrt(math.pi))
    want63 = c63 * x * (-35 * x**2 * y**4 + 21 * x**4 * y**2 - x**6 + 7 * y**6)
    want61 = -c61 * x * (13 * z**2 - 1) * (-10 * x**2 * y**2 + x**4 + 5 * y**4)
    torch.testing.assert_close(out[:, 63], want63)
    torch.testing.assert_close(out[:, 61], want61)


def test_sh_orthonormal_on_the_sphere():
    # Gauss-Legendre in z times uniform azimuth integrates these degree <= 14 polynomials exactly
    nodes, weights = np.polynomial.legendre.leggauss(12)
    phi = np.arange(32) * 2 * np.pi / 32
    z = np.repeat(nodes, 32)
    r = np.sqrt(1 - z**2)
    v = torch.tensor(np.stack([r * np.tile(np.cos(phi), 12), r * np.tile(np.sin(phi), 12), z], axis=1))
    w = torch.tensor(np.repeat(weights, 32) * 2 * np.pi / 32)
    basis = sh_encode(v, 8)
    gram = basis.T @ (w[:, None] * basis)
    torch.testing.assert_close(gram, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-11)


def test_sh_gradcheck_and_module():
    v = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: sh_encode(p, 8), (v,))
    enc = SHEncoder(degree=4, backend="torch")
    d = unit_vectors(6, 3).float().view(2, 3, 3)
    assert enc.output_dim == 16 and enc(d).shape == (2, 3, 16)
    torch.testing.assert_close(enc(2.5 * d, size=2.5), sh_encode(d.reshape(-1, 3), 4).view(2, 3, 16))
    with pytest.raises(ValueError):
        SHEncoder(degree=9, backend="torch")


# ----------------------------------------------------------------------------------------------- freq
def test_freq_layout_matches_explicit_sin_cos():
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = freq_encode(x, 6)
    assert out.shape == (4, 39)
    for b in range(4):
        want = x[b].tolist()
        for f in range(6):
            want += [math.sin(2**f * c) for c in x[b].tolist()]
            want += [math.cos(2**f * c) for c in x[b].tolist()]
        torch.testing.assert_close(out[b], torch.tensor(want, dtype=torch.float64), rtol=1e-13, atol=1e-13)
    assert freq_encode(x, 0).equal(x)


def test_freq_gradcheck_and_module():
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: freq_encode(p, 4), (x,))
    enc = FreqEncoder(input_dim=3, degree=6, backend="torch")
    d = torch.randn(2, 5, 3)
    assert enc.output_dim == 39 and enc(d).shape == (2, 5, 39)
    torch.testing.assert_close(enc(d.half()), freq_encode(d.half().float().reshape(-1, 3), 6).view(2, 5, 39))


def test_stencil_is_the_point_and_its_six_clamped_neighbours_encoded_one_by_one():
    from gridencoder.reference import grid_encode_stencil

    gen = torch.Generator().manual_seed(5)
    offsets = level_offsets(3, 5, 2, 4, 2.1, 10, False)
    table = torch.randn(offsets[-1], 2, generator=gen, dtype=torch.float64)
    u = torch.rand(300, 3, generator=gen, dtype=torch.float64)
    u[:20, 0], u[20:40, 2] = 0.001, 0.9995  # neighbours clamped at the faces
    u[40:45] = -0.01  # a point outside encodes to 0, its neighbours are clamped inside
    step = 0.004
    got = grid_encode_stencil(u, table, torch.tensor(offsets), 2.1, 4, "hash", False, "linear", step)
    neighbours = [u] + [(u + sign * step * torch.eye(3, dtype=u.dtype)[axis]).clamp(0, 1)
                        for sign in (1, -1) for axis in range(3)]
    want = torch.stack([grid_encode(p, table, torch.tensor(offsets), 2.1, 4, "hash") for p in neighbours])
    assert got.shape == (7, 300, 10)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got[0, 40:45].abs().max() == 0 and got[1:, 40:45].abs().max() > 0
