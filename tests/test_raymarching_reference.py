"""The PyTorch ray-marching reference against explicit computations written out here (CPU only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import raymarching
from raymarching import reference as ref

FLT_MAX = float(np.finfo(np.float32).max)


# --- independent helpers ------------------------------------------------------------------------------------
def morton_explicit(x: int, y: int, z: int) -> int:
    code = 0
    for bit in range(10):
        code |= ((x >> bit) & 1) << (3 * bit) | ((y >> bit) & 1) << (3 * bit + 1) | ((z >> bit) & 1) << (3 * bit + 2)
    return code


def morton_table(H: int) -> np.ndarray:
    """Morton code of every cell of an H³ grid, indexed [x, y, z]."""
    axis = np.arange(H)
    codes = np.zeros((H, H, H), dtype=np.int64)
    for bit in range(10):
        b = (axis >> bit) & 1
        codes |= (b[:, None, None] << (3 * bit)) | (b[None, :, None] << (3 * bit + 1)) | (b[None, None, :] << (3 * bit + 2))
    return codes


def grid_from_dense(occupancy: np.ndarray) -> torch.Tensor:
    """Density grid [C, H³] in Morton order (1 where occupied) from dense occupancy [C, H, H, H]."""
    C, H = occupancy.shape[0], occupancy.shape[1]
    codes = morton_table(H).reshape(-1)
    grid = np.zeros((C, H**3), dtype=np.float32)
    grid[:, codes] = occupancy.reshape(C, -1)
    return torch.from_numpy(grid)


def slab_near_far(o, d, lo, hi, min_near):
    """Ray/box intersection written as the textbook slab method in float64."""
    t0, t1 = -math.inf, math.inf
    for k in range(3):
        if d[k] == 0:
            if not lo[k] <= o[k] <= hi[k]:
                return FLT_MAX, FLT_MAX
            continue
        a, b = sorted(((lo[k] - o[k]) / d[k], (hi[k] - o[k]) / d[k]))
        t0, t1 = max(t0, a), min(t1, b)
        if t0 > t1:
            return FLT_MAX, FLT_MAX
    return max(t0, min_near), t1


def step_sizes(C: int, H: int, max_steps: int) -> tuple[np.float32, np.float32]:
    two_sqrt3 = np.float32(2) * np.float32(math.sqrt(3))
    return two_sqrt3 / np.float32(max_steps), two_sqrt3 * np.float32(2 ** (C - 1)) / np.float32(H)


def march_one(o, d, t, far, limit, bound, occ, H, dt_gamma, max_steps):
    """One ray marched by the contract, scalar code: float32 t (the kernels accumulate t in float32),
    float64 everywhere else. Returns a list of (xyz, dt, gap)."""
    C = occ.shape[0]
    dt_min, dt_max = step_sizes(C, H, max_steps)
    t, last, out = np.float32(t), np.float32(t), []
    while t < far and len(out) < limit:
        p = [min(max(o[k] + float(t) * d[k], -bound), bound) for k in range(3)]
        dt = np.float32(min(max(float(t) * dt_gamma, dt_min), dt_max))
        level = max(math.frexp(max(abs(v) for v in p))[1], math.frexp(float(dt) * H / 2)[1])
        level = min(max(level, 0), C - 1)
        mip = min(2.0**level, bound)
        cell = [int(min(max((v / mip + 1) / 2 * H, 0), H - 1)) for v in p]
        if occ[level, cell[0], cell[1], cell[2]]:
            t = np.float32(t + dt)
            out.append((p, float(dt), float(t - last)))
            last = t
            continue
        exits = []
        for k in range(3):
            face = ((cell[k] + 0.5 + 0.5 * math.copysign(1, d[k])) / H * 2 - 1) * mip
            exits.append((face - p[k]) / d[k] if d[k] != 0 else math.inf)
        cell_end = float(t) + max(0.0, min(exits))
        while True:
            t = np.float32(t + np.float32(min(max(float(t) * dt_gamma, dt_min), dt_max)))
            if t >= cell_end:
                break
    return out


def random_rays(n: int, gen: torch.Generator, radius: float = 2.5, spread: float = 0.9):
    """Rays from a sphere around the origin towards random points in the box."""
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1) * radius
    target = (torch.rand(n, 3, generator=gen) * 2 - 1) * spread
    return o, torch.nn.functional.normalize(target - o, dim=-1)


def compare_marches(xyzs, deltas, offsets, counts, expected, atol=1e-5):
    """Number of rays whose samples differ from the expected lists (positions and deltas within atol)."""
    bad = 0
    for r, samples in enumerate(expected):
        count, offset = int(counts[r]), int(offsets[r])
        if count != len(samples):
            bad += 1
            continue
        if count == 0:
            continue
        want_xyz = torch.tensor([s[0] for s in samples], dtype=torch.float64)
        want_delta = torch.tensor([[s[1], s[2]] for s in samples], dtype=torch.float64)
        got_xyz = xyzs[offset:offset + count].double()
        got_delta = deltas[offset:offset + count].double()
        if not (torch.allclose(got_xyz, want_xyz, atol=atol, rtol=0)
                and torch.allclose(got_delta, want_delta, atol=atol, rtol=1e-5)):
            bad += 1
    return bad


# --- geometry -------------------------------------------------------------------------------------------------
def test_near_far_matches_slab_method_including_axis_parallel_rays_and_misses():
    gen = torch.Generator().manual_seed(0)
    o, d = random_rays(64, gen)
    wild_o = (torch.rand(64, 3, generator=gen) * 2 - 1) * 3
    wild_d = torch.nn.functional.normalize(torch.randn(64, 3, generator=gen), dim=-1)
    special_o = torch.tensor([[-3.0, 0.1, 0.2], [-3.0, 2.0, 0.2], [0.3, 0.1, -4.0], [0.0, 0.0, 0.0],
                              [2.0, 0.0, 0.0], [0.1, -3.0, 0.4]])
    special_d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0],
                              [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    rays_o = torch.cat([o, wild_o, special_o])
    rays_d = torch.cat([d, wild_d, special_d])
    bound = 0.75
    aabb = torch.tensor([-bound, -bound, -bound, bound, bound, bound])
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, aabb, min_near=0.2)
    want = [slab_near_far(a.tolist(), b.tolist(), [-bound] * 3, [bound] * 3, 0.2) for a, b in zip(rays_o, rays_d)]
    want_near = torch.tensor([w[0] for w in want], dtype=torch.float64)
    want_far = torch.tensor([w[1] for w in want], dtype=torch.float64)
    miss = want_near == FLT_MAX
    assert miss.any() and (~miss).any()
    assert bool((nears.double()[miss] == FLT_MAX).all()) and bool((fars.double()[miss] == FLT_MAX).all())
    torch.testing.assert_close(nears.double()[~miss], want_near[~miss], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fars.double()[~miss], want_far[~miss], rtol=1e-5, atol=1e-5)
    # axis-parallel: hit through the middle, miss beside the box, start inside (near clamped), box behind
    assert nears[128].item() == pytest.approx(2.25) and fars[128].item() == pytest.approx(3.75)
    assert nears[129].item() == FLT_MAX
    assert nears[131].item() == pytest.approx(0.2) and fars[131].item() == pytest.approx(0.75)
    assert nears[132].item() == pytest.approx(0.2) and fars[132].item() < 0


def test_sph_from_ray_hits_the_sphere_at_the_returned_angles():
    gen = torch.Generator().manual_seed(1)
    o = (torch.rand(32, 3, generator=gen) * 2 - 1) * 0.5
    d = torch.nn.functional.normalize(torch.randn(32, 3, generator=gen), dim=-1)
    radius = 1.3
    coords = ref.sph_from_ray(o, d, radius).double()
    theta = (coords[:, 0] + 1) * math.pi / 2
    phi = coords[:, 1] * math.pi
    point = radius * torch.stack([theta.sin() * phi.cos(), theta.cos(), theta.sin() * phi.sin()], -1)
    t = ((point - o.double()) * d.double()).sum(-1)
    torch.testing.assert_close(o.double() + t[:, None] * d.double(), point, atol=1e-5, rtol=0)
    assert bool((t > 0).all())
    axes = ref.sph_from_ray(torch.zeros(3, 3), torch.eye(3), 1.0)
    torch.testing.assert_close(axes, torch.tensor([[0.0, 0.0], [-1.0, 0.0], [0.0, 0.5]]), atol=1e-6, rtol=0)


def test_morton_codes_by_hand_and_round_trip():
    coords = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [2, 0, 0], [3, 5, 7], [1023, 1023, 1023]],
                          dtype=torch.int32)
    codes = ref.morton3D(coords)
    assert codes.dtype == torch.int32
    assert codes.tolist() == [1, 2, 4, 7, 8, 431, 2**30 - 1]
    gen = torch.Generator().manual_seed(2)
    many = torch.randint(0, 1024, (500, 3), generator=gen, dtype=torch.int32)
    codes = ref.morton3D(many)
    assert codes.tolist() == [morton_explicit(*c) for c in many.tolist()]
    back = ref.morton3D_invert(codes)
    assert back.dtype == torch.int32 and torch.equal(back, many)
    cells = torch.arange(8**3, dtype=torch.int32)
    assert torch.equal(ref.morton3D(ref.morton3D_invert(cells)), cells)


def test_packbits_matches_numpy_little_bit_order_and_writes_in_place():
    gen = torch.Generator().manual_seed(3)
    grid = torch.rand(2, 16**3, generator=gen)
    want = np.packbits((grid.numpy() > 0.4).reshape(-1), bitorder="little")
    assert np.array_equal(ref.packbits(grid, 0.4).numpy(), want)
    buffer = torch.zeros(2 * 16**3 // 8, dtype=torch.uint8)
    out = ref.packbits(grid, 0.4, buffer)
    assert out is buffer and np.array_equal(buffer.numpy(), want)


# --- training march -----------------------------------------------------------------------------------------
def random_occupancy(C: int, H: int, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((C, H, H, H)) < fraction


@pytest.mark.parametrize("C, H, bound, dt_gamma, max_steps, fraction", [
    (1, 16, 1.0, 0.0, 256, 0.3),      # RealFusion's setting: one cascade, constant step
    (2, 8, 2.0, 1 / 64, 128, 0.3),    # two cascades, steps growing with distance
    (2, 8, 2.0, 0.0, 64, 1.0),        # everything occupied: the max_steps cap binds
])
def test_march_rays_train_follows_the_contract(C, H, bound, dt_gamma, max_steps, fraction):
    occupancy = random_occupancy(C, H, fraction, seed=4)
    bitfield = ref.packbits(grid_from_dense(occupancy), 0.5)
    gen = torch.Generator().manual_seed(5)
    rays_o, rays_d = random_rays(150, gen, radius=3.0 * bound, spread=0.9 * bound)
    aabb = torch.tensor([-bound] * 3 + [bound] * 3)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, aabb)
    counter = torch.zeros(2, dtype=torch.int32)
    xyzs, dirs, deltas, rays = ref.march_rays_train(rays_o, rays_d, bound, bitfield, C, H, nears, fars, counter,
                                                    -1, False, 128, True, dt_gamma, max_steps)
    ids, offsets, counts = rays.long().unbind(-1)
    total = int(counts.sum())
    assert rays.dtype == torch.int32 and torch.equal(ids, torch.arange(150))
    assert torch.equal(offsets, torch.cumsum(counts, 0) - counts)
    assert counter.tolist() == [total, 150]
    assert xyzs.shape[0] == ref.round_up(total, 128) and xyzs.shape[0] % 128 == 0 and xyzs.shape[0] > total
    assert not xyzs[total:].any() and not dirs[total:].any() and not deltas[total:].any()
    assert int(counts.max()) <= max_steps
    if fraction == 1.0:
        assert int(counts.max()) == max_steps
    row_ray = torch.repeat_interleave(torch.arange(150), counts)
    torch.testing.assert_close(dirs[:total], rays_d[row_ray])
    expected = [march_one(o.tolist(), d.tolist(), n.item(), f.item(), max_steps, bound, occupancy, H, dt_gamma,
                          max_steps) for o, d, n, f in zip(rays_o, rays_d, nears, fars)]
    assert sum(len(e) for e in expected) > 1000
    assert compare_marches(xyzs, deltas, offsets, counts, expected) <= 2


def test_march_rays_train_spacing_on_an_occupied_cube():
    H, bound, max_steps = 32, 1.0, 512
    occupancy = np.zeros((1, H, H, H), dtype=bool)
    occupancy[0, 8:24, 8:24, 8:24] = True  # the cube [-0.5, 0.5)³
    bitfield = ref.packbits(grid_from_dense(occupancy), 0.5)
    gen = torch.Generator().manual_seed(6)
    rays_o, rays_d = random_rays(64, gen, radius=3.0, spread=0.4)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, torch.tensor([-1.0] * 3 + [1.0] * 3))
    xyzs, _, deltas, rays = ref.march_rays_train(rays_o, rays_d, bound, bitfield, 1, H, nears, fars,
                                                 force_all_rays=True, align=128, max_steps=max_steps)
    dt = 2 * math.sqrt(3) / max_steps
    total = int(rays[:, 2].sum())
    inside = (xyzs[:total].abs() <= 0.5 + 1e-6).all(-1)
    assert bool(inside.all())
    torch.testing.assert_close(deltas[:total, 0], torch.full((total,), dt), atol=1e-6, rtol=0)
    hits = 0
    for r in range(64):
        offset, count = rays[r, 1].item(), rays[r, 2].item()
        samples = xyzs[offset:offset + count].double()
        t = ((samples - rays_o[r].double()) * rays_d[r].double()).sum(-1)
        steps = (t - nears[r].double()) / dt
        torch.testing.assert_close(steps, steps.round(), atol=2e-3, rtol=0)  # on the lattice near + k·dt
        if count:
            hits += 1
            # the first gap runs from the ray start to the first sample's end; the cube is convex: no later gaps
            gap = deltas[offset:offset + count, 1].double()
            assert gap[0].item() == pytest.approx(t[0].item() + dt - nears[r].item(), abs=1e-5)
            torch.testing.assert_close(gap[1:], torch.full_like(gap[1:], dt), atol=2e-6, rtol=0)
        # every lattice point inside the cube is sampled
        lattice = nears[r].double() + torch.arange(int((fars[r] - nears[r]) / dt) + 1) * dt
        points = rays_o[r].double() + lattice[:, None] * rays_d[r].double()
        surely_in = int((points.abs() < 0.5 - 1e-5).all(-1).sum())
        maybe_in = int((points.abs() < 0.5 + 1e-5).all(-1).sum())  # points on a face may go either way
        assert surely_in <= count <= maybe_in
    assert hits > 40


def test_march_rays_train_start_jitter_uses_torch_rand():
    H = 8
    bitfield = ref.packbits(torch.ones(1, H**3), 0.5)
    gen = torch.Generator().manual_seed(7)
    rays_o, rays_d = random_rays(16, gen)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, torch.tensor([-1.0] * 3 + [1.0] * 3))
    torch.manual_seed(123)
    xyzs, _, deltas, rays = ref.march_rays_train(rays_o, rays_d, 1.0, bitfield, 1, H, nears, fars, perturb=True,
                                                 force_all_rays=True, max_steps=64)
    torch.manual_seed(123)
    noise = torch.rand(16)
    dt = 2 * math.sqrt(3) / 64
    first = xyzs[rays[:, 1].long()].double()
    t_first = ((first - rays_o.double()) * rays_d.double()).sum(-1)
    torch.testing.assert_close(t_first, nears.double() + dt * noise.double(), atol=1e-5, rtol=0)


def test_march_rays_train_buffer_sized_by_mean_count_drops_what_does_not_fit():
    H = 8
    bitfield = ref.packbits(torch.ones(1, H**3), 0.5)
    gen = torch.Generator().manual_seed(8)
    rays_o, rays_d = random_rays(32, gen)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, torch.tensor([-1.0] * 3 + [1.0] * 3))
    full = ref.march_rays_train(rays_o, rays_d, 1.0, bitfield, 1, H, nears, fars, force_all_rays=True, max_steps=64)
    counter = torch.tensor([0, 0], dtype=torch.int32)
    xyzs, _, deltas, rays = ref.march_rays_train(rays_o, rays_d, 1.0, bitfield, 1, H, nears, fars, counter,
                                                 mean_count=256, align=128, max_steps=64)
    assert xyzs.shape[0] == 384  # 256 rounded up: an exact multiple still gets one more block
    counts, offsets = rays[:, 2].long(), rays[:, 1].long()
    assert torch.equal(counts, full[3][:, 2].long()) and counter.tolist() == [int(counts.sum()), 32]
    fits = offsets + counts <= 384
    assert fits.any() and (~fits).any()
    last = int((offsets + counts)[fits].max())
    torch.testing.assert_close(xyzs[:last], full[0][:last])
    assert not xyzs[last:].any()
    ws, _, _ = ref.composite_rays_train(torch.full((384,), 50.0), torch.ones(384, 3), deltas, rays)
    assert bool((ws[~fits] == 0).all()) and bool((ws[fits] > 0.5).all())


# --- compositing ----------------------------------------------------------------------------------------------
def composite_explicit(sigmas, rgbs, deltas, rays, T_thresh):
    """Front-to-back compositing, one ray and one sample at a time (differentiable, any dtype)."""
    n, m = rays.shape[0], sigmas.shape[0]
    ws, depth, image = [sigmas.new_zeros(())] * n, [sigmas.new_zeros(())] * n, [rgbs.new_zeros(3)] * n
    for ray, offset, count in rays.tolist():
        if count == 0 or offset + count > m:
            continue
        T, s = 1.0, 0.0
        w_sum, d_sum, c_sum = sigmas.new_zeros(()), sigmas.new_zeros(()), rgbs.new_zeros(3)
        for i in range(offset, offset + count):
            alpha = 1 - torch.exp(-sigmas[i] * deltas[i, 0])
            w = alpha * T
            c_sum = c_sum + w * rgbs[i]
            s = s + deltas[i, 1]
            d_sum = d_sum + w.detach() * s
            w_sum = w_sum + w
            T = T * (1 - alpha)
            if T < T_thresh:
                break
        ws[ray], depth[ray], image[ray] = w_sum, d_sum, c_sum
    return torch.stack(ws), torch.stack(depth), torch.stack(image)


def analytic_backward(sigmas, rgbs, deltas, rays, grad_ws, grad_image, T_thresh):
    """The kernel's hand-written backward (kernels.md), as a plain loop in float64."""
    grad_sigma, grad_rgb = torch.zeros_like(sigmas), torch.zeros_like(rgbs)
    ws, _, image = composite_explicit(sigmas, rgbs, deltas, rays, T_thresh)
    for ray, offset, count in rays.tolist():
        if count == 0 or offset + count > sigmas.shape[0]:
            continue
        T, acc = 1.0, torch.zeros(3, dtype=sigmas.dtype)
        for i in range(offset, offset + count):
            alpha = 1 - math.exp(-sigmas[i].item() * deltas[i, 0].item())
            w = alpha * T
            T = T * (1 - alpha)
            acc = acc + w * rgbs[i]
            grad_rgb[i] = grad_image[ray] * w
            grad_sigma[i] = deltas[i, 0] * ((grad_image[ray] * (T * rgbs[i] - (image[ray] - acc))).sum()
                                            + grad_ws[ray] * (1 - ws[ray]))
            if T < T_thresh:
                break
    return grad_sigma, grad_rgb


def composite_inputs(seed: int, dtype=torch.float64, n=6, m=64):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.tensor([9, 0, 12, 5, 16, 7])[:n]
    offsets = torch.cumsum(counts, 0) - counts
    order = torch.randperm(n, generator=gen)  # rows need not be in ray order
    rays = torch.stack([order, offsets, counts], -1).to(torch.int32)
    rays[5, 1] = m - 3  # does not fit the buffer: all outputs stay zero
    sigmas = (torch.rand(m, generator=gen) * 30).to(dtype)
    rgbs = torch.rand(m, 3, generator=gen).to(dtype)
    deltas = torch.stack([torch.full((m,), 0.05), torch.rand(m, generator=gen) * 0.1 + 0.05], -1).to(dtype)
    return sigmas, rgbs, deltas, rays


@pytest.mark.parametrize("T_thresh", [1e-4, 0.05])
def test_composite_rays_train_forward_and_gradients_match_the_explicit_sum(T_thresh):
    sigmas, rgbs, deltas, rays = composite_inputs(9, torch.float32)
    gen = torch.Generator().manual_seed(10)
    g_ws, g_img = torch.randn(6, generator=gen), torch.randn(6, 3, generator=gen)

    s1, c1 = sigmas.clone().requires_grad_(), rgbs.clone().requires_grad_()
    ws, depth, image = ref.composite_rays_train(s1, c1, deltas, rays, T_thresh)
    ((ws * g_ws).sum() + (image * g_img).sum() + depth.sum()).backward()

    s2, c2 = sigmas.double().requires_grad_(), rgbs.double().requires_grad_()
    ws2, depth2, image2 = composite_explicit(s2, c2, deltas.double(), rays, T_thresh)
    ((ws2 * g_ws).sum() + (image2 * g_img).sum()).backward()

    ray_of_missing = rays[5, 0].item()
    assert ws[ray_of_missing] == 0 and depth[ray_of_missing] == 0 and not image[ray_of_missing].any()
    assert ws[rays[1, 0].item()] == 0  # the empty ray
    torch.testing.assert_close(ws.double(), ws2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(depth.double(), depth2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(image.double(), image2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s1.grad.double(), s2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c1.grad.double(), c2.grad, atol=1e-5, rtol=1e-4)
    want_s, want_c = analytic_backward(sigmas.double(), rgbs.double(), deltas.double(), rays, g_ws.double(),
                                       g_img.double(), T_thresh)
    torch.testing.assert_close(s1.grad.double(), want_s, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c1.grad.double(), want_c, atol=1e-5, rtol=1e-4)
    if T_thresh == 0.05:  # the early stop really cut samples off
        assert int((s1.grad == 0).sum()) > 10


def test_composite_rays_train_gradcheck_float64():
    sigmas, rgbs, deltas, rays = composite_inputs(11, torch.float64)
    sigmas = sigmas / 10  # transmittance stays far from the threshold: the cut-off does not move under probing

    def run(s, c):
        ws, _, image = ref.composite_rays_train(s, c, deltas, rays, 1e-2)
        return ws, image

    assert torch.autograd.gradcheck(run, (sigmas.requires_grad_(), rgbs.requires_grad_()), eps=1e-6, atol=1e-6)


def test_composite_rays_train_half_inputs_give_float32_outputs_and_half_gradients():
    sigmas, rgbs, deltas, rays = composite_inputs(12, torch.float32)
    s, c = sigmas.half().requires_grad_(), rgbs.half().requires_grad_()
    ws, depth, image = ref.composite_rays_train(s, c, deltas, rays)
    assert ws.dtype == depth.dtype == image.dtype == torch.float32
    (ws.sum() + image.sum()).backward()
    assert s.grad.dtype == c.grad.dtype == torch.float16
    want, _, _ = ref.composite_rays_train(s.detach().float(), c.detach().float(), deltas, rays)
    torch.testing.assert_close(ws, want)


# --- inference --------------------------------------------------------------------------------------------
def sphere_scene(H: int = 64, bound: float = 1.0, radius: float = 0.5):
    """Occupancy of a ball (cells whose centre lies within radius + one cell) and its fields."""
    centres = (np.arange(H) + 0.5) / H * 2 * bound - bound
    x, y, z = np.meshgrid(centres, centres, centres, indexing="ij")
    inside = np.sqrt(x**2 + y**2 + z**2) < radius + 2 * bound / H
    bitfield = ref.packbits(grid_from_dense(inside[None]), 0.5)

    def field(xyz):
        sigma = 40.0 * (xyz.norm(dim=-1) < radius).float()
        return sigma, torch.sigmoid(xyz * 3)

    return bitfield, field


def test_march_rays_inference_fills_n_step_rows_per_slot():
    H = 16
    occupancy = random_occupancy(1, H, 0.3, seed=13)
    bitfield = ref.packbits(grid_from_dense(occupancy), 0.5)
    gen = torch.Generator().manual_seed(14)
    rays_o, rays_d = random_rays(40, gen)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, torch.tensor([-1.0] * 3 + [1.0] * 3))
    rays_t = nears + torch.rand(40, generator=gen) * 0.5
    alive = torch.tensor([3, 17, 0, 25, 39, 8], dtype=torch.int32)
    n_step = 5
    xyzs, dirs, deltas = ref.march_rays(6, n_step, alive, rays_t, rays_o, rays_d, 1.0, bitfield, 1, H, nears, fars,
                                        align=128, max_steps=256)
    assert xyzs.shape == (128, 3) and deltas.shape == (128, 2)
    assert not xyzs[6 * n_step:].any()
    expected = [march_one(rays_o[i].tolist(), rays_d[i].tolist(), rays_t[i].item(), fars[i].item(), n_step, 1.0,
                          occupancy, H, 0.0, 256) for i in alive.tolist()]
    counts = torch.tensor([len(e) for e in expected])
    assert counts.sum() > 10
    assert compare_marches(xyzs, deltas, torch.arange(6) * n_step, counts, expected) == 0
    for slot, ray in enumerate(alive.tolist()):
        rows = slice(slot * n_step, slot * n_step + int(counts[slot]))
        assert bool((dirs[rows] == rays_d[ray]).all())
        assert not deltas[slot * n_step + int(counts[slot]):(slot + 1) * n_step].any()


def render_inference(rays_o, rays_d, nears, fars, bitfield, H, field, max_steps, T_thresh):
    n = rays_o.shape[0]
    weights_sum, depth, image = torch.zeros(n), torch.zeros(n), torch.zeros(n, 3)
    alive, rays_t = torch.arange(n, dtype=torch.int32), nears.clone()
    step = 0
    while step < max_steps and alive.numel():
        n_alive = alive.numel()
        n_step = max(min(n // n_alive, 8), 1)
        xyzs, _, deltas = ref.march_rays(n_alive, n_step, alive, rays_t, rays_o, rays_d, 1.0, bitfield, 1, H, nears,
                                         fars, 128, False, 0.0, max_steps)
        sigmas, rgbs = field(xyzs)
        ref.composite_rays(n_alive, n_step, alive, rays_t, sigmas, rgbs, deltas, weights_sum, depth, image, T_thresh)
        alive = alive[alive >= 0]
        step += n_step
    return weights_sum, depth, image


def test_inference_march_and_composite_equal_the_training_path_with_absolute_depth():
    H, max_steps, radius = 64, 512, 0.5
    bitfield, field = sphere_scene(H, 1.0, radius)
    gen = torch.Generator().manual_seed(15)
    rays_o, rays_d = random_rays(300, gen, radius=2.5, spread=0.8)
    nears, fars = ref.near_far_from_aabb(rays_o, rays_d, torch.tensor([-1.0] * 3 + [1.0] * 3))
    xyzs, _, deltas, rays = ref.march_rays_train(rays_o, rays_d, 1.0, bitfield, 1, H, nears, fars,
                                                 force_all_rays=True, align=128, max_steps=max_steps)
    sigmas, rgbs = field(xyzs)
    ws_train, depth_train, image_train = ref.composite_rays_train(sigmas, rgbs, deltas, rays, 1e-4)
    ws, depth, image = render_inference(rays_o, rays_d, nears, fars, bitfield, H, field, max_steps, 1e-4)

    torch.testing.assert_close(ws, ws_train, atol=2e-4, rtol=0)
    torch.testing.assert_close(image, image_train, atol=2e-4, rtol=0)
    # training depth is measured from the ray start, inference depth from the camera
    torch.testing.assert_close(depth, depth_train + ws_train * nears, atol=1e-3, rtol=0)
    # absolute: for rays that hit the opaque ball, depth/weight is the distance to its surface
    b = (rays_o * rays_d).sum(-1)
    disc = b**2 - ((rays_o**2).sum(-1) - radius**2)
    hit = disc > 0.05
    assert hit.sum() > 50 and bool((ws[hit] > 0.99).all()) and bool((ws[~hit & (disc < -0.05)] == 0).all())
    surface = -b[hit] - disc[hit].sqrt()
    assert (depth[hit] / ws[hit] - surface).abs().max() < 0.05


def test_composite_rays_stops_at_zero_step_and_low_transmittance():
    sigmas = torch.tensor([1.0, 2.0, 0.0, 0.0, 500.0, 1.0, 1.0, 1.0])
    rgbs = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 24
    deltas = torch.tensor([[0.1, 0.1], [0.1, 0.2], [0.0, 0.0], [0.0, 0.0],
                           [0.1, 0.1], [0.1, 0.1], [0.1, 0.1], [0.1, 0.1]])
    alive = torch.tensor([1, 0], dtype=torch.int32)
    rays_t = torch.tensor([2.0, 1.0])
    ws, depth, image = torch.tensor([0.0, 0.5]), torch.zeros(2), torch.zeros(2, 3)
    ref.composite_rays(2, 4, alive, rays_t, sigmas, rgbs, deltas, ws, depth, image, 1e-2)
    # slot 0 (ray 1): two samples then a zero step -> ends
    T, w_sum, d_sum, c_sum, t = 1.0 - 0.5, 0.5, 0.0, torch.zeros(3), 1.0
    for i in range(2):
        w = (1 - math.exp(-sigmas[i].item() * 0.1)) * T
        t += deltas[i, 1].item()
        w_sum, d_sum, c_sum = w_sum + w, d_sum + w * t, c_sum + w * rgbs[i]
        T = 1 - w_sum
    assert alive.tolist() == [-1, -1]
    assert ws[1].item() == pytest.approx(w_sum) and depth[1].item() == pytest.approx(d_sum)
    torch.testing.assert_close(image[1], c_sum)
    # slot 1 (ray 0): the opaque sample is kept, the next one still enters (T was tested before it), then stop
    a = [1 - math.exp(-s * 0.1) for s in (500.0, 1.0)]
    assert ws[0].item() == pytest.approx(a[0] + (1 - a[0]) * a[1], abs=1e-6)
    assert depth[0].item() == pytest.approx(a[0] * 2.1 + (1 - a[0]) * a[1] * 2.2, abs=1e-6)
    assert rays_t.tolist() == [2.0, 1.0]  # ended rays keep their t

    alive, rays_t = torch.tensor([0], dtype=torch.int32), torch.tensor([1.0])
    ws, depth, image = torch.zeros(1), torch.zeros(1), torch.zeros(1, 3)
    ref.composite_rays(1, 4, alive, rays_t, torch.full((4,), 0.1), rgbs[:4], torch.full((4, 2), 0.1), ws, depth,
                       image, 1e-2)
    assert alive.tolist() == [0] and rays_t.item() == pytest.approx(1.4)  # all samples used: the ray goes on


def test_get_ops_namespace():
    ops = raymarching.get_ops("torch")
    assert ops.name == "torch"
    assert set(vars(ops)) == set(raymarching.OPS) | {"name"}
    assert ops.march_rays_train is ref.march_rays_train
    assert raymarching.get_ops("auto").name in ("torch", "cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        raymarching.get_ops("opengl")
