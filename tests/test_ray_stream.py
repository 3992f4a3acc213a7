"""The ray stream (`--ray_stream`): what it finds in a result, that it is a plain call where it does not apply, and
the option reaching the renderer. Its behaviour on a GPU is in test_ray_stream_gpu.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nerf.build import build_renderer
from nerf.option_checks import parse
from nerf.ray_stream import RayStream, tensors_in


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
