"""Camera conventions: look-at, handedness, rays, view buckets, prompts and the random-pose sampler."""

from __future__ import annotations


import pytest
import torch

from nerf.cameras import (BOTTOM, FRONT, OVERHEAD, circle_cameras, direction_prompts, fixed_cameras, get_rays,
                          look_at, random_cameras, sphere_point, view_direction)

# The default sampling of training cameras (radius, field of view, hemisphere rate, bucket angles).
SAMPLING = dict(radius_range=(1.0, 1.5), fovy_range=(40, 70), uniform_sphere_rate=0.5, angle_overhead=30, angle_front=60)


def test_sphere_point_conventions():
    # phi = 0 on +z, phi = 90 on +x, theta from +y.
    r = torch.tensor([2.0, 2.0, 2.0])
    theta = torch.deg2rad(torch.tensor([90.0, 90.0, 0.0]))
    phi = torch.deg2rad(torch.tensor([0.0, 90.0, 0.0]))
    expected = torch.tensor([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert torch.allclose(sphere_point(r, theta, phi), expected, atol=1e-6)


@pytest.mark.parametrize("left_handed", [False, True])
def test_cameras_look_at_origin(left_handed):
    cams = random_cameras(64, 16, **SAMPLING, generator=torch.Generator().manual_seed(0),
                          left_handed=left_handed)
    forward = cams.poses[:, :3, 2]
    to_origin = -cams.centers / cams.centers.norm(dim=-1, keepdim=True)
    assert torch.allclose(forward, to_origin, atol=1e-5)
    rot = cams.poses[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(64, 3, 3), atol=1e-5)
    det = torch.linalg.det(rot)
    assert torch.allclose(det, torch.full_like(det, -1.0 if left_handed else 1.0), atol=1e-5)


def test_centre_pixel_ray_hits_origin_and_rays_are_unit():
    cams = fixed_cameras(75.0, torch.tensor([0.0, 123.0]), 1.8, 55.0, 64)
    rays_o, rays_d, inds = cams.rays()
    assert inds is None and rays_o.shape == (2, 64 * 64, 3)
    assert torch.allclose(rays_d.norm(dim=-1), torch.ones(2, 64 * 64), atol=1e-5)
    # the four pixels around the image centre look (almost) at the origin
    centre = [31 * 64 + 31, 31 * 64 + 32, 32 * 64 + 31, 32 * 64 + 32]
    mean_dir = rays_d[:, centre].mean(1)
    to_origin = -cams.centers / cams.centers.norm(dim=-1, keepdim=True)
    assert torch.allclose(mean_dir / mean_dir.norm(dim=-1, keepdim=True), to_origin, atol=1e-4)


def test_right_handed_image_axes():
    """From the input camera (on +z), image right is world +x and image down is world -y (no mirror)."""
    cams = fixed_cameras(90.0, torch.zeros(1), 2.0, 60.0, 8)
    _, rays_d, _ = cams.rays()
    d = rays_d[0].reshape(8, 8, 3)
    assert (d[:, -1, 0] > d[:, 0, 0]).all()  # right column points further to +x
    assert (d[-1, :, 1] < d[0, :, 1]).all()  # bottom row points further to -y
    mirrored = fixed_cameras(90.0, torch.zeros(1), 2.0, 60.0, 8, left_handed=True)
    dm = mirrored.rays()[1][0].reshape(8, 8, 3)
    assert (dm[:, -1, 0] < dm[:, 0, 0]).all()


def test_pose_angle_90_is_on_the_horizon():
    cams = circle_cameras(8, 90.0, 1.8, 55.0, 16)
    assert torch.allclose(cams.centers[:, 1], torch.zeros(8), atol=1e-6)
    assert torch.allclose(cams.centers.norm(dim=-1), torch.full((8,), 1.8), atol=1e-5)
    real = fixed_cameras(75.0, torch.zeros(1), 1.8, 55.0, 16)
    assert torch.allclose(real.centers[0], torch.tensor([0.0, 0.4659, 1.7387]), atol=1e-4)


def test_circle_path_azimuths():
    cams = circle_cameras(100, 75.0, 1.8, 55.0, 16)
    assert torch.allclose(cams.phi[:3], torch.tensor([0.0, 3.6, 7.2]))


def test_focal_and_random_pixels():
    poses = look_at(torch.tensor([[0.0, 0.0, 2.0]]))
    g = torch.Generator().manual_seed(1)
    rays_o, rays_d, inds = get_rays(poses, 10.0, 16, 16, num_rays=50, generator=g)
    assert rays_d.shape == (1, 50, 3) and inds.shape == (50,) and int(inds.max()) < 256
    full = get_rays(poses, 10.0, 16, 16)[1]
    assert torch.allclose(rays_d[0], full[0, inds])


EPS = 1e-3


@pytest.mark.parametrize("phi,expected", [
    (0.0, FRONT), (60 - EPS, FRONT), (60 + EPS, 1), (180 - EPS, 1), (180 + EPS, 2),
    (240 - EPS, 2), (240 + EPS, 3), (360 - EPS, 3),
])
def test_azimuth_buckets_both_sides_of_boundaries(phi, expected):
    assert int(view_direction(torch.tensor([90.0]), torch.tensor([phi]))[0]) == expected


@pytest.mark.parametrize("theta,expected", [(30 - EPS, OVERHEAD), (30.0, OVERHEAD), (30 + EPS, FRONT),
                                             (150 - EPS, FRONT), (150.0, BOTTOM), (150 + EPS, BOTTOM)])
def test_polar_buckets_override(theta, expected):
    assert int(view_direction(torch.tensor([theta]), torch.tensor([10.0]))[0]) == expected


def test_direction_prompts():
    pairs = direction_prompts("a <t>", "", True, "face")
    assert [p[0] for p in pairs] == [f"a <t>, {v} view" for v in ("front", "side", "back", "side", "overhead", "bottom")]
    assert pairs[0][1] == "" and pairs[1][1] == "face"
    assert direction_prompts("a", "blurry", True, "face")[2][1] == "blurry, face"
    assert direction_prompts("a", "n", False, "face") == [("a", "n")]


def test_sampler_statistics():
    g = torch.Generator().manual_seed(0)
    batches = [random_cameras(256, 8, **SAMPLING, generator=g) for _ in range(400)]
    radii = torch.cat([b.centers.norm(dim=-1) for b in batches])
    assert radii.min() >= 1.0 - 1e-5 and radii.max() <= 1.5 + 1e-5
    assert abs(float(radii.mean()) - 1.25) < 0.01
    # a batch from the hemisphere branch has every theta <= 90; the (theta, phi) branch reaches up to 120
    hemisphere = [bool((b.theta <= 90 + 1e-4).all()) for b in batches]
    fraction = sum(hemisphere) / len(batches)
    assert abs(fraction - 0.5) < 0.1
    thetas = torch.cat([b.theta for b, h in zip(batches, hemisphere) if not h])
    assert thetas.max() <= 120 + 1e-4 and thetas.max() > 115
    focal = torch.tensor([b.focal for b in batches])
    fovy = 2 * torch.rad2deg(torch.atan(8 / (2 * focal)))
    assert fovy.min() >= 40 - 1e-3 and fovy.max() <= 70 + 1e-3
    fixed_radius_fovy = {**SAMPLING, "radius_range": (1.0, 1.0), "fovy_range": (55, 55), "uniform_sphere_rate": 1.0}
    only_uniform = random_cameras(512, 8, **fixed_radius_fovy, generator=g)
    assert (only_uniform.centers[:, 1] >= 0).all()


def test_sampler_is_seeded():
    a = random_cameras(4, 8, **SAMPLING, generator=torch.Generator().manual_seed(3))
    b = random_cameras(4, 8, **SAMPLING, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.poses, b.poses) and a.focal == b.focal
