"""The compiled ray-marching kernels against the PyTorch reference, on the GPU (forward and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import raymarching
from raymarching import reference as ref

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


@pytest.fixture(scope="module")
def ops():
    ops = raymarching.get_ops("cuda")
    assert ops.name == "cuda"
    return ops


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """Max abs error within tol relative to the magnitude of the expected values."""
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol:.1g} x {scale:.3g}"


def rays_towards_box(n: int, seed: int, bound: float):
    gen = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1) * 3 * bound
    target = (torch.rand(n, 3, generator=gen) * 2 - 1) * bound
    d = torch.nn.functional.normalize(target - o, dim=-1)
    return o.to(DEVICE), d.to(DEVICE)


def random_bitfield(C: int, H: int, fraction: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    grid = (torch.rand(C, H**3, generator=gen) < fraction).float()
    return ref.packbits(grid, 0.5).to(DEVICE)


def ball_bitfield(H: int, bound: float, radius: float) -> torch.Tensor:
    cells = ref.morton3D_invert(torch.arange(H**3, dtype=torch.int32)).float()
    centres = ((cells + 0.5) / H * 2 - 1) * bound
    return ref.packbits((centres.norm(dim=-1) < radius + 2 * bound / H).float()[None], 0.5).to(DEVICE)


def mismatched_rays(a, b) -> tuple[int, int]:
    """Compare two training marches ray by ray: (rays whose sample lists differ, rays compared)."""
    (xyz_a, dir_a, delta_a, rays_a), (xyz_b, dir_b, delta_b, rays_b) = a, b
    assert torch.equal(rays_a[:, 0], rays_b[:, 0])
    count_a, count_b = rays_a[:, 2].long(), rays_b[:, 2].long()
    fits_a = rays_a[:, 1].long() + count_a <= xyz_a.shape[0]
    fits_b = rays_b[:, 1].long() + count_b <= xyz_b.shape[0]
    same = (count_a == count_b) & (fits_a == fits_b)
    compared = same & fits_a
    counts = torch.where(compared, count_a, 0)
    ray = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    rank = torch.arange(ray.numel(), device=ray.device) - (torch.cumsum(counts, 0) - counts)[ray]
    rows_a, rows_b = rays_a[ray, 1].long() + rank, rays_b[ray, 1].long() + rank
    bad = ~same
    for x, y in ((xyz_a, xyz_b), (dir_a, dir_b), (delta_a, delta_b)):
        differs = ((x[rows_a] - y[rows_b]).abs() > 1e-5).any(-1)
        bad[ray[differs]] = True
    return int(bad.sum()), counts.numel()


# --- small ops ------------------------------------------------------------------------------------------------
def test_near_far_sph_morton_packbits_match_the_reference(ops):
    rays_o, rays_d = rays_towards_box(4096, 0, 0.75)
    rays_o[:16] = torch.tensor([0.1, -3.0, 0.2], device=DEVICE)
    rays_d[:16] = torch.tensor([0.0, 1.0, 0.0], device=DEVICE)  # axis-parallel
    rays_d[16:32] = -rays_d[16:32]  # box behind the origin
    wild = torch.randn(300, 3, generator=torch.Generator().manual_seed(11))
    rays_d[32:332] = torch.nn.functional.normalize(wild, dim=-1).to(DEVICE)  # many of these miss
    aabb = torch.tensor([-0.75] * 3 + [0.75] * 3, device=DEVICE)
    got, want = ops.near_far_from_aabb(rays_o, rays_d, aabb, 0.2), ref.near_far_from_aabb(rays_o, rays_d, aabb, 0.2)
    miss = want[0] == ref.FLT_MAX
    assert 0 < int(miss.sum()) < 4096 and torch.equal(got[0] == ref.FLT_MAX, miss)
    for g, w in zip(got, want):
        close(g[~miss], w[~miss])
        assert bool((g[miss] == ref.FLT_MAX).all())
    close(ops.sph_from_ray(rays_o * 0.1, rays_d, 1.4), ref.sph_from_ray(rays_o * 0.1, rays_d, 1.4))
    coords = torch.randint(0, 1024, (10000, 3), dtype=torch.int32, device=DEVICE)
    codes = ops.morton3D(coords)
    assert torch.equal(codes, ref.morton3D(coords)) and torch.equal(ops.morton3D_invert(codes), coords)
    grid = torch.rand(2, 64**3, device=DEVICE)
    bitfield = torch.zeros(2 * 64**3 // 8, dtype=torch.uint8, device=DEVICE)
    assert ops.packbits(grid, 0.3, bitfield) is bitfield
    assert torch.equal(bitfield, ref.packbits(grid, 0.3))


# --- training ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("C, H, bound, dt_gamma, fraction", [
    (1, 128, 0.75, 0.0, 0.3),     # RealFusion's grid
    (2, 64, 2.0, 1 / 128, 0.2),   # cascades and growing steps
])
def test_march_rays_train_matches_the_reference(ops, C, H, bound, dt_gamma, fraction):
    bitfield = random_bitfield(C, H, fraction, seed=1)
    rays_o, rays_d = rays_towards_box(4096, 2, bound)
    aabb = torch.tensor([-bound] * 3 + [bound] * 3, device=DEVICE)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, aabb)
    outputs = []
    for backend in (ops, ref):
        counter = torch.zeros(2, dtype=torch.int32, device=DEVICE)
        torch.manual_seed(3)
        out = backend.march_rays_train(rays_o, rays_d, bound, bitfield, C, H, nears, fars, counter, -1, True, 128,
                                       True, dt_gamma, 1024)
        outputs.append((out, counter))
    (got, counter_got), (want, counter_want) = outputs
    bad, total = mismatched_rays(got, want)
    print(f"march_rays_train C={C}: {bad} of {total} rays differ, {int(counter_want[0])} samples")
    assert bad <= max(2, total // 1000)
    assert abs(int(counter_got[0]) - int(counter_want[0])) <= 8 * bad and int(counter_got[1]) == 4096
    assert got[0].shape[0] == ref.round_up(int(counter_got[0]), 128)
    assert not got[0][int(counter_got[0]):].any()


def test_march_rays_train_buffer_rows_only_adds_zero_rows(ops):
    bitfield = random_bitfield(1, 128, 0.3, seed=1)
    rays_o, rays_d = rays_towards_box(1024, 2, 0.75)
    aabb = torch.tensor([-0.75] * 3 + [0.75] * 3, device=DEVICE)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, aabb)
    exact = ops.march_rays_train(rays_o, rays_d, 0.75, bitfield, 1, 128, nears, fars, align=128, force_all_rays=True)
    padded = ops.march_rays_train(rays_o, rays_d, 0.75, bitfield, 1, 128, nears, fars, align=128,
                                  force_all_rays=True, buffer_rows=lambda rows: rows + 1000)
    rows = exact[0].shape[0]
    assert padded[0].shape[0] == rows + 1000
    for got, want in zip(padded[:3], exact[:3]):
        assert torch.equal(got[:rows], want) and not got[rows:].any()
    assert torch.equal(padded[3], exact[3])


def test_march_rays_train_fixed_buffer_drops_the_same_rays(ops):
    bitfield = random_bitfield(1, 128, 0.5, seed=4)
    rays_o, rays_d = rays_towards_box(2048, 5, 0.75)
    aabb = torch.tensor([-0.75] * 3 + [0.75] * 3, device=DEVICE)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, aabb)
    got = ops.march_rays_train(rays_o, rays_d, 0.75, bitfield, 1, 128, nears, fars, None, 40000, False, 128)
    want = ref.march_rays_train(rays_o, rays_d, 0.75, bitfield, 1, 128, nears, fars, None, 40000, False, 128)
    assert got[0].shape[0] == want[0].shape[0] == 40064
    assert mismatched_rays(got, want)[0] <= 2
    sigmas, rgbs = torch.full((40064,), 30.0, device=DEVICE), torch.ones(40064, 3, device=DEVICE)
    ws_got = ops.composite_rays_train(sigmas, rgbs, got[2], got[3])[0]
    ws_want = ref.composite_rays_train(sigmas, rgbs, want[2], want[3])[0]
    assert int((ws_want == 0).sum()) > 100  # the buffer was too small for many rays
    assert int(((ws_got == 0) != (ws_want == 0)).sum()) <= 2


def composite_case(seed: int, rays: int = 3000, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 200, (rays,), generator=gen)
    offsets = torch.cumsum(counts, 0) - counts
    m = int(counts.sum()) + 77
    table = torch.stack([torch.randperm(rays, generator=gen), offsets, counts], -1).to(torch.int32)
    table[-5:, 1] = m - 10  # rows that do not fit
    sigmas = torch.rand(m, generator=gen) * 40 * (torch.rand(m, generator=gen) < 0.7)
    rgbs = torch.rand(m, 3, generator=gen)
    deltas = torch.stack([torch.rand(m, generator=gen) * 0.02, torch.rand(m, generator=gen) * 0.05], -1)
    return (sigmas.to(DEVICE, dtype), rgbs.to(DEVICE, dtype), deltas.to(DEVICE), table.to(DEVICE))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_composite_rays_train_forward_and_backward_match_the_reference(ops, dtype, tol):
    sigmas, rgbs, deltas, rays = composite_case(6, dtype=dtype)
    grads = torch.randn(rays.shape[0], device=DEVICE), torch.randn(rays.shape[0], 3, device=DEVICE)
    results = []
    for backend in (ops, ref):
        s, c = sigmas.clone().requires_grad_(), rgbs.clone().requires_grad_()
        ws, depth, image = backend.composite_rays_train(s, c, deltas, rays, 1e-4)
        ((ws * grads[0]).sum() + (image * grads[1]).sum()).backward()
        results.append((ws, depth, image, s.grad, c.grad))
    for got, want in zip(*results):
        assert got.dtype == want.dtype
        close(got, want, tol)


# --- inference --------------------------------------------------------------------------------------------------
def render(backend, rays_o, rays_d, nears, fars, bitfield, field, H, bound, max_steps=1024, T_thresh=1e-4):
    n = rays_o.shape[0]
    weights_sum = torch.zeros(n, device=DEVICE)
    depth, image = torch.zeros(n, device=DEVICE), torch.zeros(n, 3, device=DEVICE)
    alive, rays_t = torch.arange(n, dtype=torch.int32, device=DEVICE), nears.clone()
    step = 0
    while step < max_steps and alive.numel():
        n_alive = alive.numel()
        n_step = max(min(n // n_alive, 8), 1)
        xyzs, _, deltas = backend.march_rays(n_alive, n_step, alive, rays_t, rays_o, rays_d, bound, bitfield, 1, H,
                                             nears, fars, 128, False, 0.0, max_steps)
        sigmas, rgbs = field(xyzs)
        backend.composite_rays(n_alive, n_step, alive, rays_t, sigmas, rgbs, deltas, weights_sum, depth, image,
                               T_thresh)
        alive = alive[alive >= 0]
        step += n_step
    return weights_sum, depth, image


def ball_field(radius: float):
    def field(xyz):
        return 30.0 * (xyz.norm(dim=-1) < radius).float() * (1 + xyz[:, 0]), torch.sigmoid(xyz * 4)

    return field


def test_inference_march_and_composite_match_the_reference(ops):
    H, bound, radius = 128, 0.75, 0.5
    bitfield = ball_bitfield(H, bound, radius)
    rays_o, rays_d = rays_towards_box(128 * 128, 7, bound)
    aabb = torch.tensor([-bound] * 3 + [bound] * 3, device=DEVICE)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, aabb)
    field = ball_field(radius)
    got = render(ops, rays_o, rays_d, nears, fars, bitfield, field, H, bound)
    want = render(ref, rays_o, rays_d, nears, fars, bitfield, field, H, bound)
    assert float(want[0].sum()) > 1000
    differs = torch.zeros(rays_o.shape[0], dtype=torch.bool, device=DEVICE)
    for g, w in zip(got, want):
        err = (g - w).abs().reshape(rays_o.shape[0], -1).amax(-1)
        differs |= err > 1e-5 * max(1.0, float(w.abs().max()))
    print(f"inference: {int(differs.sum())} of {rays_o.shape[0]} rays differ")
    assert int(differs.sum()) <= rays_o.shape[0] // 1000


def test_inference_march_single_call_matches_the_reference(ops):
    bitfield = random_bitfield(1, 128, 0.3, seed=8)
    rays_o, rays_d = rays_towards_box(5000, 9, 0.75)
    aabb = torch.tensor([-0.75] * 3 + [0.75] * 3, device=DEVICE)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, aabb)
    alive = torch.randperm(5000, device=DEVICE)[:3000].to(torch.int32)
    rays_t = nears + torch.rand(5000, device=DEVICE) * 0.3
    got = ops.march_rays(3000, 6, alive, rays_t, rays_o, rays_d, 0.75, bitfield, 1, 128, nears, fars, 128)
    want = ref.march_rays(3000, 6, alive, rays_t, rays_o, rays_d, 0.75, bitfield, 1, 128, nears, fars, 128)
    rows_differ = torch.zeros(3000 * 6 + 128 - (3000 * 6) % 128, dtype=torch.bool, device=DEVICE)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        rows_differ |= ((g - w).abs() > 1e-5).any(-1)
    slots = rows_differ[:18000].reshape(3000, 6).any(-1)
    assert int(slots.sum()) <= 3


def test_cpu_tensors_fall_back_to_the_reference_under_auto(ops):
    auto = raymarching.get_ops("auto")
    rays_o, rays_d = rays_towards_box(8, 10, 1.0)
    aabb = torch.tensor([-1.0] * 3 + [1.0] * 3)
    nears, _ = auto.near_far_from_aabb(rays_o.cpu(), rays_d.cpu(), aabb)
    assert nears.device.type == "cpu"
    with pytest.raises(ValueError):
        ops.near_far_from_aabb(rays_o.cpu(), rays_d.cpu(), aabb)
    assert np.isfinite(nears.numpy()).all()
