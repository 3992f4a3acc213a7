"""The ray stream on a GPU: a march on it reads its sample count while the main stream is still busy, with the main
stream's result; it waits for a grid update and for rays it did not draw; training with it gives the same losses."""

from __future__ import annotations

import pytest
import torch

from nerf.build import build_renderer
from nerf.option_checks import parse
from tests.test_normal_type import trainer_with_prior

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
STEPS = 6  # training steps compared with and without the ray stream
BUSY_CYCLES = 1 << 30  # about half a second of a spinning kernel on the main stream


def marching_renderer(tmp_path):
    opt = parse(["--workspace", str(tmp_path / "ws"), "--cuda_ray", "--ray_stream", "--occupancy_grid_size", "32"])
    renderer = build_renderer(opt, CUDA).train()
    renderer.density_bitfield.fill_(255)  # every cell occupied
    generator = torch.Generator(CUDA).manual_seed(0)
    rays_o = torch.nn.functional.normalize(torch.randn(2048, 3, generator=generator, device=CUDA), dim=-1) * 2
    rays_d = torch.nn.functional.normalize(torch.randn(2048, 3, generator=generator, device=CUDA) * 0.1 - rays_o,
                                           dim=-1)
    return renderer, rays_o, rays_d


def busy_main_stream() -> torch.cuda.Event:
    """Keep the main stream busy; the returned event completes when it is free again."""
    torch.cuda._sleep(BUSY_CYCLES)
    done = torch.cuda.Event()
    done.record()
    return done


def test_a_march_on_the_ray_stream_reads_its_count_while_the_main_stream_is_busy(tmp_path) -> None:
    renderer, rays_o, rays_d = marching_renderer(tmp_path)
    on_main = renderer._march_train(rays_o, rays_d, False)
    drawn_o, drawn_d = renderer.on_ray_stream(lambda: (rays_o.clone(), rays_d.clone()))
    assert renderer.ray_stream.drew(drawn_o[:5]) and not renderer.ray_stream.drew(rays_o)  # views count, others not
    renderer.on_ray_stream(renderer._march_train, drawn_o, drawn_d, False)  # the ray stream's memory pool warms up
    torch.cuda.synchronize()
    done = busy_main_stream()
    marched = renderer.on_ray_stream(renderer._march_train, drawn_o, drawn_d, False)
    assert not done.query()  # the count was read (a host wait on the ray stream) before the main stream was free
    torch.cuda.synchronize()
    for got, want in zip(marched, on_main):
        assert torch.equal(got, want)


def test_it_waits_for_a_grid_update_and_for_rays_from_the_main_stream(tmp_path) -> None:
    renderer, rays_o, rays_d = marching_renderer(tmp_path)
    drawn_o, drawn_d = renderer.on_ray_stream(lambda: (rays_o.clone(), rays_d.clone()))
    torch.cuda.synchronize()
    done = busy_main_stream()
    renderer.density_bitfield.zero_()  # an empty grid, written after the busy kernel
    renderer.ray_stream.grid_changed(CUDA)  # "cuda" names the same device as the renderer's "cuda:0"
    nears, xyzs, dirs, deltas, rays = renderer.on_ray_stream(renderer._march_train, drawn_o, drawn_d, False)
    assert done.query() and int(rays[:, 2].sum()) == 0  # it waited, and saw the new grid: no samples
    renderer.density_bitfield.fill_(255)
    torch.cuda.synchronize()
    done = busy_main_stream()
    renderer.on_ray_stream(renderer._march_train, rays_o * 1, rays_d, False)  # rays made on the main stream
    assert done.query()


def test_training_with_the_ray_stream_gives_the_same_losses(tmp_path) -> None:
    flags = ["--cuda_ray", "--fp16", "--iters", "50", "--albedo_iters", "0", "--update_extra_interval", "2"]
    runs = []
    for ray_stream in (False, True):
        torch.manual_seed(0)
        torch.cuda.manual_seed(0)
        _, _, trainer = trainer_with_prior(tmp_path / str(ray_stream), [*flags, *(["--ray_stream"] * ray_stream)],
                                           device=CUDA)
        terms = [trainer.train_step() for _ in range(STEPS)]
        torch.cuda.synchronize()
        largest_lr = max(group["lr"] for group in trainer.optimizer.param_groups)
        runs.append((terms, [p.detach().clone() for p in trainer.field.parameters()]))
    (terms_a, params_a), (terms_b, params_b) = runs
    for step_a, step_b in zip(terms_a, terms_b, strict=True):
        assert step_a.keys() == step_b.keys()
        for name in step_a:  # the hash grid's atomics add in any order: rounding, nothing more
            torch.testing.assert_close(step_b[name].float(), step_a[name].float(), rtol=2e-2, atol=1e-4)
    # Adam moves a weight by up to about lr per step whatever its gradient's size, so a weight whose gradient is
    # rounding noise may end up to 2 lr per step apart; such weights must stay rare.
    for a, b in zip(params_a, params_b, strict=True):
        apart = ~torch.isclose(b.float(), a.float(), rtol=2e-2, atol=1e-3)
        assert apart.float().mean() < 1e-3 and (b.float() - a.float()).abs().max() <= 2 * largest_lr * STEPS
