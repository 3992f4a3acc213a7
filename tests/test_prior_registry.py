"""Adding a prior takes one registry entry and one module: a prior defined in this file is selected by --guidance,
receives the run's input view, its camera and the device, and its loss term carries its own name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nerf.build import build_run
from nerf.errors import UserError
from nerf.guidance import GUIDANCES, PriorContext
from nerf.option_checks import parse
from tests.test_build import TINY


class PullToInput:
    """An image-conditioned prior in miniature: every synthetic render is pulled towards the input image."""

    term = "pull"

    def __init__(self, context: PriorContext) -> None:
        self.context = context
        self.target = context.view.rgba[..., :3].permute(2, 0, 1)[None].to(context.device)

    def __call__(self, image: Tensor, direction: int, *, camera) -> tuple[Tensor, dict[str, Tensor]]:
        target = F.interpolate(self.target, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return ((image - target) ** 2).mean(), {}


def build(prior, context: PriorContext) -> PullToInput:
    return PullToInput(context)


def test_a_registered_prior_gets_the_input_view_and_names_its_loss_term(repo, tmp_path, monkeypatch):
    monkeypatch.setitem(GUIDANCES, "pull", f"{__name__}:build")
    opt = parse([*TINY, "--guidance", "pull", "--image_path", str(repo / "examples/natural-images/cat/rgba.png"),
                 "--workspace", str(tmp_path / "ws")])
    run = build_run(opt, device=torch.device("cpu"))
    assert isinstance(run.guidance, PullToInput)
    context = run.guidance.context
    assert context.view is run.real_view and context.camera is run.real_view.camera
    assert context.device == run.device and context.image_path == opt.data.image_path
    terms = run.trainer.objective.synthetic_step(0, lambda: 1.0).terms
    assert "pull" in terms and "sds" not in terms and float(terms["pull"].detach()) > 0


def test_an_unregistered_prior_is_refused_when_the_options_are_parsed():
    with pytest.raises(UserError, match="unknown --guidance 'pull'.*sd, oracle"):
        parse(["--guidance", "pull"])
