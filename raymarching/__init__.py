"""Ray marching through an occupancy grid and volume compositing, with a CUDA and a PyTorch backend.

``get_ops(backend)`` returns one namespace with the same functions whichever backend serves them. The
compiled module is looked up (prebuilt by ``pip install ./raymarching``, else compiled on first use) when
``get_ops`` is first asked for it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from raymarching import reference
from raymarching.cuda_build import resolve_backend

PACKAGE_DIR = Path(__file__).resolve().parent
OPS = ("near_far_from_aabb", "sph_from_ray", "morton3D", "morton3D_invert", "packbits", "march_rays_train",
       "composite_rays_train", "march_rays", "composite_rays")


def get_ops(backend: str = "auto") -> SimpleNamespace:
    """The ops of ``backend``: "torch" (reference), "cuda" (compiled, an error if unusable) or "auto" (cuda
    when it is usable, else the reference). The namespace's ``name`` says which one was chosen."""
    ext = resolve_backend(backend, "raymarching", PACKAGE_DIR)
    if ext is None:
        return SimpleNamespace(name="torch", **{op: getattr(reference, op) for op in OPS})
    from raymarching.cuda import CudaOps

    ops = CudaOps(ext, backend)
    return SimpleNamespace(name="cuda", **{op: getattr(ops, op) for op in OPS})
