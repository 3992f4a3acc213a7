"""Camera noise (the original's one random offset of every ray's origin and direction) lives on the camera, so
the field and whatever else renders that camera (the oracle's ground truth) see the same rays."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import torch

from nerf.cameras import fixed_cameras, offset_rays, ray_noise
from nerf.scenes.procedural import make_scene
from nerf.scenes.raytrace import render_rgba

CPU = torch.device("cpu")


def test_an_origin_offset_renders_as_the_moved_camera():
    camera = fixed_cameras(80.0, torch.tensor([30.0]), 1.8, 40.0, 24)
    shift = torch.tensor([0.04, -0.03, 0.05])
    noisy = replace(camera, ray_offset=torch.stack([shift, torch.zeros(3)]))
    moved = camera.poses.clone()
    moved[:, :3, 3] += shift
    scene = make_scene("union", 0)
    expected = render_rgba(scene, replace(camera, poses=moved))
    assert torch.allclose(render_rgba(scene, noisy), expected, atol=1e-5)
    assert (render_rgba(scene, camera) - expected).abs().max() > 0.1  # the shift is visible


def test_a_direction_offset_moves_the_oracle_target_as_it_moves_the_field_rays():
    camera = fixed_cameras(80.0, torch.tensor([30.0]), 1.8, 40.0, 24)
    offset = torch.stack([torch.zeros(3), torch.tensor([0.03, 0.0, -0.02])])
    rays_o, rays_d, _ = camera.rays()
    noisy_o, noisy_d, _ = replace(camera, ray_offset=offset).rays()
    assert torch.equal(noisy_o, rays_o) and torch.allclose(noisy_d, rays_d + offset[1])
    scene = make_scene("thin", 0)
    assert (render_rgba(scene, replace(camera, ray_offset=offset)) - render_rgba(scene, camera)).abs().max() > 0.1


def test_no_noise_draws_nothing_and_moves_nothing():
    state = torch.get_rng_state()
    assert ray_noise(0.0, CPU) is None
    assert torch.equal(torch.get_rng_state(), state)
    rays = torch.rand(5, 3), torch.rand(5, 3)
    assert all(a is b for a, b in zip(offset_rays(*rays, None), rays))


def test_the_prior_gets_the_camera_whose_rays_the_field_rendered():
    from nerf.build import build_renderer
    from nerf.objective import Objective
    from nerf.option_checks import parse

    camera = fixed_cameras(80.0, torch.tensor([0.0]), 1.8, 40.0, 8)
    seen = {}

    class Views:  # the input camera with the replacement's noise, albedo shading
        def view(self, step):
            return SimpleNamespace(camera=camera, ray_noise=0.02, direction=0)

        def shading(self, step):
            return "albedo", 1.0

    class RecordingPrior:
        term = "sds"

        def __call__(self, image, direction, *, camera):
            seen["camera"] = camera
            return image.mean(), {}

    opt = parse(["--no_cuda_ray", "--occupancy_grid_size", "16", "--lambda_orient", "0", "--lambda_smooth_2d", "0",
                 "--lambda_entropy", "0"])
    renderer = build_renderer(opt, CPU)
    march = renderer.march

    def recording_march(rays_o, rays_d, settings):
        seen["rays"] = rays_o, rays_d
        return march(rays_o, rays_d, settings)

    renderer.march = recording_march
    objective = Objective(opt.objective, iters=10, renderer=renderer, views=Views(), real_view=None,
                          guidance=RecordingPrior(), num_rays=16, generator=torch.Generator().manual_seed(0))
    objective(1)
    prior_camera = seen["camera"]
    assert prior_camera.ray_offset is not None and prior_camera.ray_offset.abs().max() > 0
    rays_o, rays_d, _ = prior_camera.rays()
    assert torch.equal(rays_o.reshape(-1, 3), seen["rays"][0]) and torch.equal(rays_d.reshape(-1, 3), seen["rays"][1])
