"""Normals by finite differences or by a predicted head (--normal_type): what each costs in field evaluations per
sample, that normals are evaluated only by the renders that use them, the predicted-normal loss, and checkpoints
that refuse the other normal type (CPU, reference backends, tiny sizes)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import Tensor

import nerf.build
from nerf import outputs
from nerf.errors import UserError
from nerf.field import RadianceField
from nerf.field.geometry import DensityGeometry
from nerf.option_checks import parse
from nerf.renderer import NORMAL_ALIGN_SAMPLES, Renderer, RenderSettings

TINY = ["--iters", "2", "--HW_real", "8", "--HW_synthetic", "8", "--num_rays", "32", "--occupancy_grid_size", "8",
        "--max_steps", "32", "--grid_levels", "4", "--grid_levels_mask", "0", "--log2_hashmap_size", "10",
        "--HW_vis", "8", "--no_cuda_ray", "--lambda_prior", "0"]


class PointCounter:
    """Counts the points that go through the grid encoder of a geometry, one field evaluation each (seven for a
    point of the central-difference stencil: the point and its six neighbours). `calls` holds (points, evaluations)."""

    def __init__(self, geometry: DensityGeometry) -> None:
        self.calls: list[tuple[int, int]] = []
        encoder = geometry.encoder
        forward, stencil = encoder.forward, encoder.stencil

        def counted(x: Tensor, bound: float = 1.0) -> Tensor:
            self.calls.append((x.shape[0], x.shape[0]))
            return forward(x, bound)

        def counted_stencil(x: Tensor, bound: float, step: float) -> Tensor:
            self.calls.append((x.shape[0], 7 * x.shape[0]))
            return stencil(x, bound, step)

        encoder.forward = counted  # type: ignore[method-assign]
        encoder.stencil = counted_stencil  # type: ignore[method-assign]

    @property
    def total(self) -> int:
        return sum(evaluations for _, evaluations in self.calls)


def small_renderer(normal_type: str) -> Renderer:
    torch.manual_seed(0)
    geometry = DensityGeometry(bound=0.75, grid_levels=4, log2_hashmap_size=10, normal_type=normal_type,
                               backend="torch")
    renderer = Renderer(RadianceField(geometry), bound=0.75, grid_size=8, max_steps=32, backend="torch")
    renderer.update_occupancy()
    return renderer.train()


def view_rays(side: int = 8) -> tuple[Tensor, Tensor]:
    ys, xs = torch.meshgrid(torch.linspace(-0.3, 0.3, side), torch.linspace(-0.3, 0.3, side), indexing="ij")
    rays_o = torch.stack([xs, ys, torch.full_like(xs, 2.0)], -1).reshape(-1, 3)
    return rays_o, torch.tensor([0.0, 0.0, -1.0]).expand_as(rays_o).contiguous()


@pytest.mark.parametrize("normal_type, align, per_sample", [("finite_difference", False, 7), ("pred", False, 1),
                                                            ("pred", True, 1)])
def test_field_evaluations_per_sample_of_a_render_with_normals(normal_type, align, per_sample) -> None:
    renderer = small_renderer(normal_type)
    counter = PointCounter(renderer.field.geometry)
    out = renderer.render(*view_rays(), RenderSettings(shading="lambertian", need_normals=True, align_normals=align))
    samples = counter.calls[0][0]  # the first call is the samples' own
    assert samples > 0
    assert counter.total == per_sample * samples + (7 * min(NORMAL_ALIGN_SAMPLES, samples) if align else 0)
    assert ("loss_normal_pred" in out) == align


def test_predicted_normals_are_unit_and_their_loss_reaches_head_and_grid() -> None:
    renderer = small_renderer("pred")
    geometry = renderer.field.geometry
    normals = geometry.normal(torch.rand(50, 3) - 0.5)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(50))
    out = renderer.render(*view_rays(), RenderSettings(need_normals=True, align_normals=True))
    loss = out["loss_normal_pred"]
    assert 0 <= float(loss.detach()) <= 2
    loss.backward()
    assert geometry.normal_head[0].weight.grad.abs().sum() > 0
    assert geometry.encoder.embeddings.grad.abs().sum() > 0  # the density-gradient target is not detached
    assert geometry.mlp[0].weight.grad.abs().sum() > 0


def test_the_predicted_normal_loss_is_the_occupancy_weighted_misalignment(monkeypatch) -> None:
    """The mean of many draws is the occupancy-weighted mean over every sample."""
    renderer = small_renderer("pred")
    calls: list = []
    original = renderer._normal_alignment

    def keep(xyzs, sigmas, normals, real):
        calls.append((xyzs, sigmas, normals, real))
        return original(xyzs, sigmas, normals, real)

    monkeypatch.setattr(renderer, "_normal_alignment", keep)
    renderer.render(*view_rays(), RenderSettings(need_normals=True, align_normals=True))
    xyzs, sigmas, normals, real = calls[0]
    occupancy = (1 - torch.exp(-sigmas)) * real
    misalignment = 1 - (normals * renderer.field.gradient_normal(xyzs)).sum(-1)
    expected = ((occupancy * misalignment).sum() / occupancy.sum()).detach()
    torch.manual_seed(3)
    with torch.no_grad():
        estimates = torch.stack([original(xyzs, sigmas, normals, real) for _ in range(20)])
    assert abs(float(estimates.mean() - expected)) < 0.05 * max(float(expected), 1e-3) + 1e-3


class CountingPrior:
    """A prior with the SDS interface whose pull is the mean brightness (cheap and differentiable)."""

    term: ClassVar[str] = "sds"

    def __call__(self, image: Tensor, direction: int, *, camera: object) -> tuple[Tensor, dict[str, Tensor]]:
        return image.mean(), {}


def trainer_with_prior(tmp_path: Path, extra: list[str], device: torch.device = torch.device("cpu")):
    """main.py's trainer for tiny options, with a stand-in prior so that synthetic steps run."""
    opt = parse([*TINY, "--workspace", str(tmp_path / "ws"), *extra])
    run = nerf.build.build_run(opt, device=device)
    trainer = nerf.build.build_trainer(opt, renderer=run.renderer, real_view=run.real_view, guidance=CountingPrior(),
                                       frames=run.frames, workspace=run.workspace)
    trainer.renderer.train()
    return opt, run, trainer


@pytest.mark.parametrize("normal_type", ["finite_difference", "pred"])
def test_normals_are_evaluated_only_by_the_renders_that_use_them(tmp_path, normal_type) -> None:
    """Input-view steps, albedo synthetic steps without normal losses and validation renders evaluate the field
    once per sample; synthetic steps with normal losses pay the normal type's cost."""
    no_normal_losses = ["--lambda_orient", "0", "--lambda_smooth_2d", "0"]
    _, run, trainer = trainer_with_prior(tmp_path, ["--normal_type", normal_type, "--albedo", *no_normal_losses])
    counter = PointCounter(trainer.field.geometry)
    renders: list[int] = []
    original_render = trainer.renderer.render

    def render(*args, **kwargs):
        before = len(counter.calls)
        out = original_render(*args, **kwargs)
        renders.append(len(counter.calls) - before)
        return out

    trainer.renderer.render = render  # type: ignore[method-assign]
    trainer.objective.synthetic_step(1, lambda: 1.0)
    trainer.objective.real_step(1)
    outputs.save_validation(trainer.frames, run.real_view, trainer.ema, size=8, out_dir=tmp_path / "val", epoch=0)
    assert renders and all(calls == 1 for calls in renders)  # one field call per render: no normal evaluations

    _, _, shaded = trainer_with_prior(tmp_path / "shaded", ["--normal_type", normal_type, "--albedo"])
    counter = PointCounter(shaded.field.geometry)
    shaded.objective.synthetic_step(1, lambda: 1.0)
    samples = counter.calls[0][0]
    expected = 7 * samples if normal_type == "finite_difference" else samples + 7 * min(NORMAL_ALIGN_SAMPLES, samples)
    assert counter.total == expected


def test_the_normal_type_is_recorded_and_a_checkpoint_refuses_the_other(tmp_path) -> None:
    workspace = tmp_path / "ws"
    opt = parse([*TINY, "--workspace", str(workspace), "--normal_type", "pred"])
    with nerf.build.open_run(opt) as run:
        run.trainer.save()
        assert run.trainer.state_dict()["options"]["field"]["normal_type"] == "pred"
    other = parse([*TINY, "--workspace", str(workspace)])
    with pytest.raises(UserError, match=r"--normal_type pred \(now finite_difference\)") as error:
        nerf.build.build_run(other)
    assert "\n" not in str(error.value)


@pytest.mark.gpu
@pytest.mark.parametrize("normal_type", ["finite_difference", "pred"])
def test_a_cuda_training_render_in_fp16_pays_its_normal_type_s_evaluations(normal_type) -> None:
    torch.manual_seed(0)
    cuda = torch.device("cuda")
    geometry = DensityGeometry(bound=0.75, grid_levels=16, log2_hashmap_size=16, normal_type=normal_type,
                               backend="cuda")
    renderer = Renderer(RadianceField(geometry), bound=0.75, grid_size=64, max_steps=256, backend="cuda").to(cuda)
    renderer.update_occupancy()
    renderer.train()
    counter = PointCounter(geometry)
    rays_o, rays_d = (t.to(cuda) for t in view_rays(96))
    settings = RenderSettings(shading="lambertian", need_normals=True, align_normals=normal_type == "pred")
    with torch.autocast("cuda", dtype=torch.float16):
        out = renderer.render(rays_o, rays_d, settings)
        loss = out["image"].mean() + out["loss_orient"] + out.get("loss_normal_pred", 0)
    loss.backward()
    samples = counter.calls[0][0]
    extra = 6 * samples if normal_type == "finite_difference" else 7 * min(NORMAL_ALIGN_SAMPLES, samples)
    assert counter.total == samples + extra
    assert torch.isfinite(loss) and torch.isfinite(geometry.encoder.embeddings.grad).all()
