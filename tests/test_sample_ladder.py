"""Sample buffers padded onto a ladder of sizes (`nerf.renderer.ladder_rows`): few distinct sizes, little padding,
and padding rows that change no output, loss or gradient of a training render (CPU, reference backends)."""

from __future__ import annotations

import pytest
import torch

import nerf.renderer
from nerf.renderer import ALIGN, SIZES_PER_DOUBLING, RenderSettings, ladder_rows
from tests.test_normal_type import small_renderer, view_rays


def test_the_ladder_has_few_sizes_and_little_padding() -> None:
    rows = torch.arange(1, 300_000).tolist()
    sizes = [ladder_rows(n) for n in rows]
    assert all(size >= n and size % ALIGN == 0 for n, size in zip(rows, sizes))
    assert all(size - n < max(ALIGN, n / SIZES_PER_DOUBLING) for n, size in zip(rows, sizes))
    for low in (2 ** 14, 2 ** 16, 2 ** 17):  # one doubling of the sizes a training render meets
        assert len({ladder_rows(n) for n in range(low + 1, 2 * low + 1)}) == SIZES_PER_DOUBLING
    assert [ladder_rows(n) for n in (1, 128, 129, 4096, 4097, 65537)] == [128, 128, 256, 4096, 4352, 69632]


def test_the_reference_marcher_pads_to_the_rows_asked_for() -> None:
    renderer = small_renderer("finite_difference")
    rays_o, rays_d = view_rays()
    nears, fars = renderer._march_bounds(rays_o, rays_d)
    march = renderer.ops.march_rays_train
    grid = renderer._grid_arguments()
    exact = march(rays_o, rays_d, **grid, nears=nears, fars=fars, align=ALIGN, force_all_rays=True, max_steps=32)
    padded = march(rays_o, rays_d, **grid, nears=nears, fars=fars, align=ALIGN, force_all_rays=True, max_steps=32,
                   buffer_rows=lambda rows: rows + 300)
    rows = exact[0].shape[0]
    assert padded[0].shape[0] == rows + 300 and int((exact[2][:, 0] > 0).sum()) > 0
    for got, want in zip(padded[:3], exact[:3]):
        assert torch.equal(got[:rows], want) and not got[rows:].any()
    assert torch.equal(padded[3], exact[3])


@pytest.mark.parametrize("normal_type", ["finite_difference", "pred"])
def test_padding_rows_change_no_output_loss_or_gradient(monkeypatch, normal_type) -> None:
    settings = RenderSettings(shading="lambertian", need_normals=True, align_normals=normal_type == "pred")
    # fewer predicted-normal draws than the render has samples, as in training (the draws of a render smaller than
    # NORMAL_ALIGN_SAMPLES follow its buffer's size)
    monkeypatch.setattr(nerf.renderer, "NORMAL_ALIGN_SAMPLES", 64)

    def render(extra_rows: int) -> tuple[dict, list[torch.Tensor]]:
        monkeypatch.setattr(nerf.renderer, "ladder_rows", lambda rows: rows + extra_rows)
        renderer = small_renderer(normal_type)
        torch.manual_seed(1)  # the light direction and the predicted-normal loss's draws
        out = renderer.render(*view_rays(), settings)
        loss = sum(value.float().sum() for key, value in out.items() if key.startswith("loss_")) + out["image"].sum()
        loss.backward()
        return out, [p.grad.clone() for p in renderer.parameters() if p.grad is not None]

    exact, exact_grads = render(0)
    padded, padded_grads = render(1000)
    assert exact.keys() == padded.keys() and any(key.startswith("loss_") for key in exact)
    for key in exact:
        torch.testing.assert_close(padded[key], exact[key], rtol=1e-5, atol=1e-6)
    assert len(exact_grads) == len(padded_grads) > 0
    for got, want in zip(padded_grads, exact_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
