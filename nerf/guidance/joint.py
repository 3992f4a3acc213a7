"""Two priors on the same rendered view, as Magic123 joins them: Stable Diffusion (with the learned token) and
Zero-1-to-3 (conditioned on the input view). The builder of the ``sd+zero123`` prior.

Each prior keeps its own term and its own weight: the objective asks every member for its surrogate loss on the one
render of the step and weights it by the lambda `nerf.guidance.prior_weights` names (``--lambda_prior`` for SD,
``--lambda_prior_zero123`` for Zero-1-to-3), so the loss log shows ``sds`` and ``zero123`` apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nerf.guidance import Guidance, PriorContext
    from nerf.options import PriorOptions


class JointGuidance:
    """The members of a joined prior, in the order of their weights in `prior_weights`."""

    term = "sds+zero123"

    def __init__(self, members: tuple[Guidance, ...]) -> None:
        self.members = members


def build(prior: PriorOptions, context: PriorContext) -> JointGuidance:
    """Zero-1-to-3 first (its folder is checked in a second), then Stable Diffusion; both stay loaded."""
    from nerf.guidance import sds, zero123

    image_prior = zero123.build(prior, context)
    return JointGuidance((sds.build(prior, context), image_prior))
