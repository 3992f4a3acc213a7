"""The 2-D prior, chosen by name (``--guidance``): what the Trainer asks of it, and the registry that builds it.

To add a prior: write one module ``nerf/guidance/NAME.py`` with ``build(prior, context)`` returning a `Guidance`
(`context` is a `PriorContext`: the loaded input view and its camera, the device the prior runs on, the precision),
and add one line ``"NAME": "nerf.guidance.NAME:build"`` to `GUIDANCES`; ``--guidance NAME`` then selects it and the
loss log names its term after the prior's ``term``. A prior weighted by its own lambda (``--lambda_prior_NAME``, an
objective option) lists it in `OWN_WEIGHTS`; the others are weighted by ``--lambda_prior``. A joined prior
(``A+B``) is built as one object whose ``members`` are its priors, each weighted by its own lambda.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from nerf.errors import UserError

if TYPE_CHECKING:
    from nerf.cameras import CameraBatch
    from nerf.data import RealView
    from nerf.guidance.joint import JointGuidance
    from nerf.options import PriorOptions


@runtime_checkable
class Guidance(Protocol):
    """A prior's pull on a rendered image [1, 3, H, W] in [0, 1] seen by `camera`.

    Returns a surrogate loss whose gradient with respect to the image is the prior's unweighted gradient (the
    objective multiplies it by ``lambda_prior``) and statistics as tensors, so that reading them (a host
    synchronisation) happens only at logging cadence. `direction` is the camera's prompt bucket
    (cameras.DIRECTIONS). `term` names the prior's loss term in the logs (e.g. ``sds``, ``oracle``).
    """

    term: ClassVar[str]

    def __call__(self, image: Tensor, direction: int, *,
                 camera: CameraBatch) -> tuple[Tensor, dict[str, Tensor]]: ...


# name -> "module:builder", imported only when chosen: `import nerf.guidance` stays free of diffusers.
GUIDANCES: dict[str, str] = {
    "sd": "nerf.guidance.sds:build",
    "oracle": "nerf.guidance.oracle:build",
    "zero123": "nerf.guidance.zero123:build",
    "sd+zero123": "nerf.guidance.joint:build",
}
# prior name -> its loss weight (an ObjectiveOptions field without "lambda_"), for priors not weighted by lambda_prior.
OWN_WEIGHTS: dict[str, str] = {"zero123": "prior_zero123"}


@dataclass(frozen=True)
class PriorContext:
    """What a prior may need besides its options: the input view as loaded for the run (an image-conditioned prior
    reads its pixels and camera), where the prior runs (not necessarily the field's device), and the precision."""

    view: RealView
    device: torch.device
    fp16: bool
    image_path: str  # the input's file: files beside it (token_autoinit.txt) describe it
    compile: str = "off"  # the run's resolved --compile (nerf.compilation.resolve): on, off or if_cached

    @property
    def camera(self) -> CameraBatch:
        return self.view.camera


def check_guidance_name(name: str) -> None:
    """A UserError unless `name` is registered."""
    if name not in GUIDANCES:
        raise UserError(f"unknown --guidance '{name}'; choose one of: {', '.join(GUIDANCES)}.")


def prior_weights(name: str) -> tuple[str, ...]:
    """The loss weights of the terms of prior `name`, one per member of a joined prior (``sd+zero123``)."""
    return tuple(OWN_WEIGHTS.get(member, "prior") for member in name.split("+"))


def prior_members(guidance: Guidance | JointGuidance) -> tuple[Guidance, ...]:
    """The priors whose terms enter the loss: a joined prior's members, else the prior itself."""
    return getattr(guidance, "members", (guidance,))


def build_guidance(prior: PriorOptions, context: PriorContext) -> Guidance | JointGuidance:
    """The prior named by ``prior.guidance``, built from the prior options and the run's context."""
    check_guidance_name(prior.guidance)
    module, builder = GUIDANCES[prior.guidance].split(":")
    return getattr(importlib.import_module(module), builder)(prior, context)
