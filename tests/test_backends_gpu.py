"""The CUDA and PyTorch backends on the GPU, end to end: one trained field renders the same images through
either, and a short `--O` prior-free run reaches the input-view quality the CPU test asks for."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nerf.cli import train as main_module
from nerf.build import build_run
from nerf.cameras import fixed_cameras
from nerf.option_checks import parse
from nerf.options import DEFAULT_IMAGE
from nerf.renderer import RenderSettings
from tests.test_reconstruction import ITERS, SMALL, input_view_metrics, shaded_sphere_rgba

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def trained(repo, tmp_path_factory):
    """A field fitted prior-free on the bundled example with default `--O` options (CUDA backends)."""
    root = tmp_path_factory.mktemp("backends")
    opt = parse(["--O", "--lambda_prior", "0", "--image_path", str(repo / DEFAULT_IMAGE), "--iters", "300",
                 "--seed", "0", "--workspace", str(root / "cuda")])
    trainer = build_run(opt).trainer
    assert trainer.field.encoder.backend_name == "cuda" and trainer.renderer.ops.name == "cuda"
    trainer.train()
    return trainer, opt, root


def reference_renderer(trainer, opt, root):
    """The same field, occupancy grid included, behind the PyTorch reference ops."""
    opt = dataclasses.replace(opt, render=dataclasses.replace(opt.render, cuda_ray=False),
                              workspace=str(root / "torch"))
    renderer = build_run(opt).renderer
    assert renderer.field.encoder.backend_name == "torch" and renderer.ops.name == "torch"
    renderer.load_state_dict(trainer.renderer.state_dict())
    return renderer


def render(renderer, camera) -> tuple[torch.Tensor, torch.Tensor]:
    rays_o, rays_d, _ = camera.rays()
    renderer.eval()
    with torch.no_grad():
        out = renderer.render(rays_o, rays_d, RenderSettings(), max_ray_batch=4096)
    return out["image"].reshape(-1, 3), out["weights_sum"].reshape(-1)


def test_both_backends_render_the_same_images(trained):
    trainer, opt, root = trained
    reference = reference_renderer(trainer, opt, root)
    data = opt.data
    orbit = fixed_cameras(data.pose_angle, torch.tensor([120.0]), data.orbit_radius, data.default_fovy,
                          data.HW_real).to(trainer.device)
    for camera in (trainer.real_view.camera, orbit):
        image_cuda, opacity_cuda = render(trainer.renderer, camera)
        image_ref, opacity_ref = render(reference, camera)
        for opacity in (opacity_cuda, opacity_ref):  # both show the object, not two blank frames
            assert float((opacity > 0.5).float().mean()) > 0.05
        mse = float(((image_cuda - image_ref) ** 2).mean())
        psnr = -10 * np.log10(max(mse, 1e-12))
        print(f"\ncuda vs torch backend, {camera.height}^2 view: PSNR {psnr:.1f} dB")
        assert psnr >= 40


def test_short_O_run_reaches_the_cpu_input_view_quality(tmp_path):
    image = shaded_sphere_rgba(tmp_path / "rgba.png")
    workspace = tmp_path / "ws"
    small = [arg for arg in SMALL if arg != "--no_cuda_ray"]
    args = ["--O", "--image_path", str(image), "--workspace", str(workspace), "--iters", str(ITERS), *small]
    assert main_module.main(args) == 0
    assert "backends: grid encoder cuda, ray marching cuda" in (workspace / "log.txt").read_text()
    psnr, iou = input_view_metrics(args)
    print(f"\n--O on the GPU, input view: PSNR {psnr:.2f} dB, mask IoU {iou:.3f}")
    assert psnr >= 25 and iou >= 0.9
