"""Ray marching through an occupancy grid and volume compositing, with a CUDA and a PyTorch backend.

``get_ops(backend)`` returns one namespace with the same functions whichever backend serves them.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from nerf.errors import UserError

OPS = ("near_far_from_aabb", "sph_from_ray", "morton3D", "morton3D_invert", "packbits", "march_rays_train",
       "composite_rays_train", "march_rays", "composite_rays")
BACKENDS = ("auto", "cuda", "torch")

_log = logging.getLogger(__name__)
_announced: set[str] = set()


def _namespace(name: str, module: object) -> SimpleNamespace:
    if name not in _announced:
        _announced.add(name)
        _log.info("raymarching backend: %s", name)
    return SimpleNamespace(name=name, **{op: getattr(module, op) for op in OPS})


def get_ops(backend: str = "auto") -> SimpleNamespace:
    """The ops of ``backend``: "torch" (reference), "cuda" (compiled) or "auto" (cuda when it is usable)."""
    if backend not in BACKENDS:
        raise UserError(f"unknown raymarching backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    from raymarching import reference

    if backend == "cuda":
        raise UserError("the raymarching CUDA backend is not available in this build: use backend 'torch'")
    return _namespace("torch", reference)
