"""The ray stream (`--ray_stream`): what it finds in a result, that it is a plain call where it does not apply, and
the option reaching the renderer. Its behaviour on a GPU is in test_ray_stream_gpu.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nerf.build import build_renderer
from nerf.option_checks import parse
from nerf.ray_stream import RayStream, tensors_in
from tests.test_normal_type import trainer_with_prior


@dataclass
class Pair:
    first: torch.Tensor
    second: object


def test_every_tensor_of_a_nested_result_is_found() -> None:
    a, b, c, d = (torch.full((1,), float(k)) for k in range(4))
    found = list(tensors_in((a, [b, {"key": c, "other": 3}], Pair(d, None), "text", None)))
    assert [t.item() for t in found] == [0.0, 1.0, 2.0, 3.0] and all(x is y for x, y in zip(found, (a, b, c, d)))


def test_on_the_cpu_or_disabled_it_is_a_plain_call() -> None:
    x = torch.arange(4.0)
    for stream in (RayStream(enabled=True), RayStream(enabled=False)):
        out = stream.run(torch.device("cpu"), lambda t, k: (t * k, t), x, k=2.0)
        assert torch.equal(out[0], 2 * x) and out[1] is x
        assert not stream.drew(out[0]) and not stream._streams  # nothing remembered, no stream made
        stream.grid_changed(torch.device("cpu"))
        assert not stream._grid_changed


def test_the_option_reaches_the_renderer(tmp_path) -> None:
    common = ["--workspace", str(tmp_path / "ws"), "--occupancy_grid_size", "8"]
    assert not build_renderer(parse(common), torch.device("cpu")).ray_stream.enabled  # off by default
    assert build_renderer(parse([*common, "--ray_stream"]), torch.device("cpu")).ray_stream.enabled


def test_in_training_every_call_takes_only_tensors_that_earlier_calls_returned(tmp_path, monkeypatch) -> None:
    """The bookkeeping that decides the ray stream's waits, followed through training steps on the CPU (no streams
    there, the same tensors): a call given a tensor that no earlier call returned waits for the whole main stream,
    i.e. the previous iteration's backward, and the ray stream gains nothing (as with a camera's broadcast origins
    made contiguous on the main stream)."""
    foreign: list[tuple[str, list[tuple[int, ...]]]] = []

    def run(self, device, fn, *args, **kwargs):  # the bookkeeping of RayStream.run, without streams
        foreign.append((fn.__name__, [tuple(t.shape) for t in self.undrawn((args, kwargs))]))
        out = fn(*args, **kwargs)
        self.remember(out)
        return out

    monkeypatch.setattr(RayStream, "run", run)
    _, _, trainer = trainer_with_prior(tmp_path, ["--ray_stream", "--albedo_iters", "0", "--update_extra_interval",
                                                  "2", "--noise_real_camera", "0.001"])
    for _ in range(4):
        trainer.train_step()
    called = {name for name, _ in foreign}
    assert {"sample", "view", "_jittered_rays", "_jittered_camera_rays", "_march_train"} <= called
    assert [(name, shapes) for name, shapes in foreign if shapes] == []
