"""The 2-D prior, chosen by name (``--guidance``): what the Trainer asks of it, and the registry that builds it.

To add a prior: write one module ``nerf/guidance/NAME.py`` with ``build(prior, *, device, fp16, image_path)``
returning a `Guidance`, and add one line ``"NAME": "nerf.guidance.NAME:build"`` to `GUIDANCES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from nerf.errors import UserError

if TYPE_CHECKING:
    from nerf.cameras import CameraBatch
    from nerf.options import PriorOptions


@runtime_checkable
class Guidance(Protocol):
    """A prior's pull on a rendered image [1, 3, H, W] in [0, 1] seen by `camera`.

    Returns a surrogate loss whose gradient with respect to the image is the prior's unweighted gradient (the
    objective multiplies it by ``lambda_prior``) and statistics as tensors, so that reading them (a host
    synchronisation) happens only at logging cadence. `direction` is the camera's prompt bucket
    (cameras.DIRECTIONS).
    """

    def __call__(self, image: Tensor, direction: int, *,
                 camera: CameraBatch) -> tuple[Tensor, dict[str, Tensor]]: ...


# name -> "module:builder", imported only when chosen: `import nerf.guidance` stays free of diffusers.
GUIDANCES: dict[str, str] = {
    "sd": "nerf.guidance.sds:build",
    "oracle": "nerf.guidance.oracle:build",
}


def build_guidance(prior: PriorOptions, *, device: torch.device, fp16: bool, image_path: str) -> Guidance:
    """The prior named by ``prior.guidance``, built from the prior options for the run's device and input image."""
    target = GUIDANCES.get(prior.guidance)
    if target is None:
        raise UserError(f"unknown --guidance '{prior.guidance}'; choose one of: {', '.join(GUIDANCES)}.")
    module, builder = target.split(":")
    return getattr(importlib.import_module(module), builder)(prior, device=device, fp16=fp16, image_path=image_path)
