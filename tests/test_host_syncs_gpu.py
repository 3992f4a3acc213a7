"""A training iteration on the GPU waits for the device only where its marchers read their sample counts: every other
host-to-device step (cameras, pixels, noise, the fp16 skip of non-finite steps) is queued without a wait."""

from __future__ import annotations

import warnings

import pytest
import torch

from nerf.cameras import CameraBatch, get_rays, random_cameras
from tests.test_normal_type import trainer_with_prior

MARCHER_READS = 2  # the input view's and the synthetic view's sample counts (force_all_rays)


def synchronisations(fn, *args) -> list[str]:
    """Where `fn` made the host wait for the GPU: the warnings of PyTorch's sync debug mode, one per wait."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "called a synchronizing" in str(w.message)]


@pytest.mark.gpu
def test_cameras_and_pixels_reach_the_gpu_without_a_wait() -> None:
    generator = torch.Generator().manual_seed(0)
    camera = random_cameras(1, 16, radius_range=(1.0, 1.5), fovy_range=(40.0, 70.0), uniform_sphere_rate=0.0,
                            angle_overhead=30.0, angle_front=60.0, generator=generator)
    moved: list[CameraBatch] = []
    assert synchronisations(lambda: moved.append(camera.to("cuda"))) == []
    torch.testing.assert_close(moved[0].poses.cpu(), camera.poses)
    state = generator.get_state()
    assert synchronisations(lambda: get_rays(moved[0].poses, camera.focal, 16, 16, 32, generator)) == []
    generator.set_state(state)
    on_host = get_rays(camera.poses, camera.focal, 16, 16, 32, generator)
    generator.set_state(state)
    on_gpu = get_rays(moved[0].poses, camera.focal, 16, 16, 32, generator)
    for got, want in zip(on_gpu, on_host):
        torch.testing.assert_close(got.cpu(), want)


@pytest.mark.gpu
@pytest.mark.parametrize("ray_stream", [False, True])
def test_a_training_iteration_waits_only_for_its_marchers(tmp_path, ray_stream) -> None:
    # a stand-in prior (no Stable Diffusion): the synthetic view is drawn, marched and rendered with its regularisers
    flags = ["--cuda_ray", "--fp16", "--iters", "50", "--albedo_iters", "0", *(["--ray_stream"] if ray_stream else [])]
    _, _, trainer = trainer_with_prior(tmp_path, flags, device=torch.device("cuda"))
    assert trainer.renderer.ray_stream.enabled == ray_stream
    trainer.train_step()  # the first iteration allocates and picks kernels
    steps = 4  # below LOG_EVERY: no divergence check, no grid update (every 16)
    waits = synchronisations(lambda: [trainer.train_step() for _ in range(steps)])
    assert len(waits) <= MARCHER_READS * steps, waits
