"""The test videos march several frames at once, each lit from its own camera: their frames are the frames of one
render per frame with that camera's light (CPU reference marcher; on a GPU the incremental CUDA marcher in fp16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nerf import outputs
from nerf.field import RadianceField
from nerf.field.geometry import DensityGeometry
from nerf.outputs import Frames, Orbit, add_video_frame, input_panel
from nerf.renderer import Renderer, RenderSettings


def trained_looking_frames(device: torch.device, backend: str, half: bool) -> Frames:
    """Frames of a field with varied density and colour (a random grid), at an orbit around it."""
    torch.manual_seed(0)
    geometry = DensityGeometry(bound=0.75, grid_levels=4, log2_hashmap_size=10, backend=backend)
    with torch.no_grad():
        geometry.encoder.embeddings.uniform_(-1, 1)
    renderer = Renderer(RadianceField(geometry), bound=0.75, grid_size=16, max_steps=64, backend=backend).to(device)
    renderer.update_occupancy()
    return Frames(renderer, Orbit(75.0, 1.8, 55.0, 30.0, 60.0), max_ray_batch=4096, half=half)


def frames_one_by_one(frames: Frames, size: int) -> dict[str, list[np.ndarray]]:
    """Every stream's frames as one render per frame, lit from its camera."""
    frames.renderer.eval()
    camera = frames.orbit.cameras(outputs.TEST_FRAMES, size, frames.device)
    streams: dict[str, list[np.ndarray]] = {k: [] for k in outputs.VIDEO_STREAMS}
    gt = input_panel(None, size)
    for k in range(outputs.TEST_FRAMES):
        settings = RenderSettings(light_d=camera.centers[k], need_normals=True, textureless_ratio=0.1)
        add_video_frame(streams, frames.render(camera, k, settings), frames, gt)
    return streams


def video_frames(frames: Frames, size: int, monkeypatch, tmp_path) -> dict[str, list[np.ndarray]]:
    """The frames render_videos writes, taken before encoding."""
    written: dict[str, list[np.ndarray]] = {}

    def keep(path, images):
        written[path.stem.split("_", 1)[1]] = list(images)
        return path

    monkeypatch.setattr(outputs, "save_video", keep)
    outputs.render_videos(frames, None, size=size, results_dir=tmp_path, name="test")
    return written


FRAMES = 23  # a shorter orbit than the videos' 100 frames keeps the one-by-one reference quick


@pytest.fixture(scope="module")
def one_by_one() -> tuple[Frames, dict[str, list[np.ndarray]]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outputs, "TEST_FRAMES", FRAMES)
        frames = trained_looking_frames(torch.device("cpu"), "torch", half=False)
        return frames, frames_one_by_one(frames, 8)


@pytest.mark.parametrize("budget, batch", [(outputs.VIDEO_BATCH_RAYS, FRAMES), (7 * 64, 7)])
def test_batched_video_frames_are_the_frames_rendered_one_by_one(one_by_one, monkeypatch, tmp_path, budget,
                                                                 batch) -> None:
    """All frames in one batch, or batches of 7 (the last one shorter)."""
    monkeypatch.setattr(outputs, "TEST_FRAMES", FRAMES)
    monkeypatch.setattr(outputs, "VIDEO_BATCH_RAYS", budget)
    frames, expected = one_by_one
    written = video_frames(frames, 8, monkeypatch, tmp_path)
    assert outputs.video_batch(8) == batch
    assert written.keys() == expected.keys()
    for key in expected:
        assert len(written[key]) == outputs.TEST_FRAMES
        for k, (got, want) in enumerate(zip(written[key], expected[key])):
            assert np.array_equal(got, want), (key, k)


@pytest.mark.parametrize("marcher", ["_render_eval", "_render_infer"])
def test_a_light_per_ray_lights_each_ray_as_its_own_render_would(marcher) -> None:
    """Both marchers (all samples at once; a few per live ray per round, as on CUDA) light each sample of a
    two-light render as the render with that ray's light alone: the per-sample light follows its ray."""
    frames = trained_looking_frames(torch.device("cpu"), "torch", half=False)
    renderer = frames.renderer.eval()
    camera = frames.orbit.cameras(2, 12, frames.device)
    rays_o, rays_d = (r.reshape(-1, 3).contiguous() for r in camera.rays()[:2])
    settings = RenderSettings(need_normals=True, textureless_ratio=0.1)
    lights = torch.nn.functional.normalize(camera.centers, dim=-1)
    both = getattr(renderer, marcher)(rays_o, rays_d, lights.repeat_interleave(144, 0), settings)
    for k in range(2):
        rows = slice(144 * k, 144 * (k + 1))
        alone = getattr(renderer, marcher)(rays_o[rows], rays_d[rows], lights[k], settings)
        assert float(alone["weights_sum"].detach().mean()) > 0.05
        for key in ("weights_sum", "image", "normal_image", "textureless_image"):
            torch.testing.assert_close(both[key][rows], alone[key], atol=1e-6, rtol=0)


def test_the_batch_is_a_ray_budget_of_at_least_one_frame() -> None:
    assert outputs.video_batch(128) == 10 and outputs.video_batch(1024) == 1 and outputs.video_batch(8) == 100


def test_a_light_per_ray_is_refused_for_lit_shading() -> None:
    frames = trained_looking_frames(torch.device("cpu"), "torch", half=False)
    frames.renderer.eval()
    rays_o, rays_d = torch.zeros(4, 3) + 2, torch.tensor([[0.0, 0.0, -1.0]]).expand(4, 3)
    with pytest.raises(ValueError, match="textureless pass only"):
        frames.renderer.render(rays_o, rays_d, RenderSettings(shading="lambertian", light_d=torch.ones(4, 3)))
    with pytest.raises(ValueError, match="one row per ray"):
        frames.renderer.render(rays_o, rays_d, RenderSettings(light_d=torch.ones(3, 3), textureless_ratio=0.1))


@pytest.mark.gpu
def test_batched_video_frames_on_the_cuda_marcher_in_fp16(monkeypatch, tmp_path) -> None:
    """Batched matrix products may round differently in fp16: at most one level of 255 apart, almost all equal
    (the textureless pass, shaded by finite-difference normals, is the most sensitive: 99.72 % equal on an H100)."""
    frames = trained_looking_frames(torch.device("cuda"), "cuda", half=True)
    assert frames.renderer.ops.name == "cuda"
    expected = frames_one_by_one(frames, 32)
    written = video_frames(frames, 32, monkeypatch, tmp_path)
    for key in expected:
        got, want = np.stack(written[key]).astype(int), np.stack(expected[key]).astype(int)
        assert np.abs(got - want).max() <= 1, key
        assert (got == want).mean() > 0.99, key
