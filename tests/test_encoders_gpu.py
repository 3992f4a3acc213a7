"""Compiled encoders against their PyTorch references: forward, gradients, fp32 and fp16 tables."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from freqencoder import FreqEncoder
from freqencoder import cuda as freq_cuda
from freqencoder.reference import freq_encode
from gridencoder import GridEncoder
from gridencoder import cuda as grid_cuda
from gridencoder.reference import grid_encode, grid_encode_stencil, level_offsets, stencil_points
from shencoder import cuda as sh_cuda
from shencoder.reference import sh_encode

pytestmark = pytest.mark.gpu

DEVICE = "cuda"


def assert_close_to(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """max |got - want| <= rel * max(1, max |want|), reported with the actual error."""
    scale = max(1.0, want.abs().max().item())
    err = (got.double() - want.double()).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x {scale:.3g}"


@pytest.fixture(scope="module", autouse=True)
def extensions():
    for name in ("gridencoder", "shencoder", "freqencoder"):
        cuda_build = importlib.import_module(f"{name}.cuda_build")  # the package's own copy, hence its cache
        module, how = cuda_build.load_extension(name, Path(__file__).resolve().parents[1] / name)
        assert module is not None, f"{name}: {how}"


def random_case(dim: int, channels: int, align_corners: bool, dtype: torch.dtype, seed: int, batch: int = 4096):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    offsets = level_offsets(dim, 6, channels, 5, 1.9, 12, align_corners)
    table = (torch.randn(offsets[-1], channels, generator=gen, device=DEVICE) * 0.5).to(dtype)
    u = torch.rand(batch, dim, generator=gen, device=DEVICE) * 1.1 - 0.05  # a few points outside [0, 1]
    grad = torch.randn(batch, 6 * channels, generator=gen, device=DEVICE).to(dtype)
    return u, table, torch.tensor(offsets, dtype=torch.int32, device=DEVICE), grad


def run_encoder(encode, u, table, offsets, grad, gridtype, align_corners, interpolation):
    u = u.clone().requires_grad_(True)
    table = table.clone().requires_grad_(True)
    out = encode(u, table, offsets, 1.9, 5, gridtype, align_corners, interpolation)
    out.backward(grad)
    return out.detach(), u.grad, table.grad


@pytest.mark.parametrize("dim,channels", [(2, 1), (2, 4), (3, 2), (3, 8), (4, 2), (5, 1)])
@pytest.mark.parametrize("gridtype", ["hash", "tiled"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_grid_fp32_matches_reference(dim, channels, gridtype, align_corners, interpolation):
    case = random_case(dim, channels, align_corners, torch.float32, seed=dim * 10 + channels)
    got = run_encoder(grid_cuda.grid_encode, *case, gridtype, align_corners, interpolation)
    want = run_encoder(grid_encode, *case, gridtype, align_corners, interpolation)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        assert_close_to(g, w, 1e-5)


@pytest.mark.parametrize("dim,channels", [(2, 2), (3, 2), (3, 1), (3, 4)])
@pytest.mark.parametrize("gridtype", ["hash", "tiled"])
@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_grid_fp16_table_matches_reference(dim, channels, gridtype, interpolation):
    u, table, offsets, grad = random_case(dim, channels, False, torch.float16, seed=7 + dim)
    got = run_encoder(grid_cuda.grid_encode, u, table, offsets, grad, gridtype, False, interpolation)
    # the truth: the same half values, interpolated and accumulated in float32
    want = run_encoder(grid_encode, u, table.float(), offsets, grad.float(), gridtype, False, interpolation)
    assert got[0].dtype == got[2].dtype == torch.float16
    for g, w in zip(got, want):
        assert_close_to(g, w, 1e-2)


def test_grid_input_gradient_only_when_requested():
    u, table, offsets, grad = random_case(3, 2, False, torch.float32, seed=3)
    table.requires_grad_(True)
    out = grid_cuda.grid_encode(u, table, offsets, 1.9, 5, "tiled")
    out.backward(grad)
    assert u.grad is None and table.grad is not None


def test_realfusion_grid_module_cuda_vs_torch_with_autocast():
    config = dict(input_dim=3, num_levels=16, level_dim=2, base_resolution=16, log2_hashmap_size=16,
                  desired_resolution=1536, gridtype="tiled")
    fast = GridEncoder(**config, backend="cuda").to(DEVICE)
    slow = GridEncoder(**config, backend="torch").to(DEVICE)
    assert fast.backend_name == "cuda" and GridEncoder(**config).backend_name == "cuda"
    with torch.no_grad():
        fast.embeddings.normal_()
        slow.embeddings.copy_(fast.embeddings)
    x = (torch.rand(65536, 3, device=DEVICE) * 2 - 1) * 0.8  # some samples outside the 0.75 bound
    for autocast, rel in ((False, 1e-5), (True, 1e-2)):
        outs = []
        for enc in (fast, slow):
            enc.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                out = enc(x, bound=0.75)
            out.float().square().sum().backward()
            outs.append((out.detach(), enc.embeddings.grad))
        assert outs[0][0].dtype == (torch.float16 if autocast else torch.float32)
        assert_close_to(outs[0][0], outs[1][0], rel)
        assert_close_to(outs[0][1], outs[1][1], rel)
    # CPU inputs through the auto backend fall back to the reference
    cpu = GridEncoder(**config)
    assert cpu(x[:8].cpu(), bound=0.75).shape == (8, 32)


def stencil_case(channels: int, dtype: torch.dtype, seed: int, batch: int = 4096, along_rays: bool = False):
    u, table, offsets, _ = random_case(3, channels, False, dtype, seed, batch)
    gen = torch.Generator(device=DEVICE).manual_seed(seed + 1)
    if along_rays:  # as the marcher orders training samples: ray after ray, so that neighbours share cells
        rays = -(-batch // 128)
        origins = torch.rand(rays, 1, 3, generator=gen, device=DEVICE) * 0.2 + 0.4
        directions = torch.nn.functional.normalize(torch.randn(rays, 1, 3, generator=gen, device=DEVICE), dim=-1)
        t = torch.linspace(0.0, 0.35, 128, device=DEVICE).view(1, -1, 1)
        u = (origins + t * directions).reshape(-1, 3)[:batch].clamp(0.0, 1.0)
    u[:64, 1], u[64:128, 0] = 0.0005, 0.9998  # neighbours clamped at the faces
    grad = torch.randn(7, batch, 6 * channels, generator=gen, device=DEVICE).to(dtype)
    return u, table, offsets, grad


@pytest.mark.parametrize("channels", [1, 2, 8])
@pytest.mark.parametrize("gridtype", ["hash", "tiled"])
@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("step", [0.003, 0.04])
@pytest.mark.parametrize("along_rays", [False, True])
def test_fused_stencil_matches_the_seven_points_encoded_apart(channels, gridtype, interpolation, dtype, step,
                                                               along_rays):
    """The fused kernel against the CUDA encoder on the seven points (forward: the same accumulation) and against
    the reference (table gradient: the shared corners are summed over the point and over runs of points in one
    cell before their atomic, so only rounding differs). Points along rays make those runs long."""
    u, table, offsets, grad = stencil_case(channels, dtype, seed=channels * 3 + int(step * 1000),
                                           batch=4096 - 7 * along_rays, along_rays=along_rays)
    config = (1.9, 5, gridtype, False, interpolation)
    table = table.clone().requires_grad_(True)
    fused = grid_cuda.grid_encode_stencil(u, table, offsets, *config, step=step)
    fused.backward(grad)
    points = stencil_points(u, step).reshape(-1, 3)
    apart = grid_cuda.grid_encode(points, table.detach(), offsets, *config).reshape(7, len(u), -1)
    assert fused.shape == (7, len(u), 6 * channels) and fused.dtype == dtype
    assert_close_to(fused.detach(), apart, 1e-6 if dtype == torch.float32 else 1e-3)
    truth = table.detach().float().requires_grad_(True)
    want = grid_encode_stencil(u, truth, offsets, *config, step=step)
    want.backward(grad.float())
    assert_close_to(fused.detach(), want.detach(), 1e-5 if dtype == torch.float32 else 1e-2)
    assert_close_to(table.grad, truth.grad, 1e-5 if dtype == torch.float32 else 1e-2)
    assert table.grad.abs().max() > 0


def test_geometry_finite_difference_normals_cuda_vs_torch_with_autocast():
    from nerf.field.geometry import DensityGeometry

    torch.manual_seed(0)
    fast = DensityGeometry(backend="cuda").to(DEVICE)
    slow = DensityGeometry(backend="torch").to(DEVICE)
    with torch.no_grad():
        fast.encoder.embeddings.mul_(100)  # features that shape the density beside the central blob
    slow.load_state_dict(fast.state_dict())
    x = (torch.rand(20000, 3, device=DEVICE) * 2 - 1) * 0.74
    results = []
    for geometry in (fast, slow):
        with torch.autocast("cuda", dtype=torch.float16):
            sigma, albedo, normal = geometry.sample(x, need_normal=True)
        (sigma.float().mean() + normal.float().square().mul(torch.arange(3, device=DEVICE)).mean()).backward()
        results.append((sigma.detach(), normal.detach(), geometry.encoder.embeddings.grad))
    assert_close_to(results[0][0], results[1][0], 1e-2)
    assert (results[0][1] - results[1][1]).norm(dim=-1).median() < 1e-2
    assert_close_to(results[0][2], results[1][2], 1e-2)


@pytest.mark.parametrize("degree", range(1, 9))
def test_sh_matches_reference(degree):
    gen = torch.Generator(device=DEVICE).manual_seed(degree)
    v = torch.randn(10000, 3, generator=gen, device=DEVICE)
    v = (v / v.norm(dim=1, keepdim=True)).requires_grad_(True)
    grad = torch.randn(10000, degree**2, generator=gen, device=DEVICE)
    out = sh_cuda.sh_encode(v, degree)
    out.backward(grad)
    v64 = v.detach().double().requires_grad_(True)
    want = sh_encode(v64, degree)
    # degree 1 is a constant: no graph, zero gradient
    want_grad = torch.autograd.grad(want, v64, grad.double())[0] if want.requires_grad else torch.zeros_like(v64)
    assert out.dtype == torch.float32
    assert_close_to(out.detach(), want.detach(), 1e-5)
    assert_close_to(v.grad, want_grad, 1e-5)


@pytest.mark.parametrize("dim,degree", [(3, 6), (2, 10), (1, 0), (4, 4)])
def test_freq_matches_reference(dim, degree):
    gen = torch.Generator(device=DEVICE).manual_seed(dim + degree)
    x = torch.randn(20000, dim, generator=gen, device=DEVICE).requires_grad_(True)
    grad = torch.randn(20000, dim * (1 + 2 * degree), generator=gen, device=DEVICE)
    out = freq_cuda.freq_encode(x, degree)
    out.backward(grad)
    x64 = x.detach().double().requires_grad_(True)
    want = freq_encode(x64, degree)
    want.backward(grad.double())
    assert_close_to(out.detach(), want.detach(), 1e-5)
    assert_close_to(x.grad, x64.grad, 1e-5)


def test_freq_module_background_config():
    enc = FreqEncoder(input_dim=3, degree=6).to(DEVICE)
    assert enc.backend_name == "cuda"
    d = torch.nn.functional.normalize(torch.randn(4, 5, 3, device=DEVICE), dim=-1)
    with torch.autocast("cuda", dtype=torch.float16):
        out = enc(d.half())
    assert out.dtype == torch.float32 and out.shape == (4, 5, 39)
    assert_close_to(out, freq_encode(d.half().double().reshape(-1, 3), 6).view(4, 5, 39), 1e-5)
