"""Procedural ground-truth objects: unions of textured primitives described by exact signed distances.

A scene is a few parts (sphere, box, capped cylinder, torus, capsule), each placed by a centre and a rotation
and painted with smooth colour bands. Signed distances make both ground truths cheap and exact: renders by sphere
tracing (`raytrace.py`) and a mesh by marching cubes, with no mesh library in the loop. Families are seeded
recipes; the same (family, seed) always gives the same scene, so a scene is fully described by its JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from nerf.errors import UserError

FAMILIES = ("primitive", "union", "nonconvex", "thin")
EXTENT = 0.65  # every part stays inside [-EXTENT, EXTENT]^3, within the NeRF's default bound of 0.75
LIGHT = (0.35, 0.8, 0.55)  # fixed world light: the baked shading is the same from every view (Lambertian)
AMBIENT = 0.35


@dataclass(frozen=True)
class Part:
    """One primitive in its local frame (y is its axis), placed by rotation angles (degrees) and a centre."""

    kind: str
    size: tuple[float, ...]
    center: tuple[float, float, float]
    tilt: float  # about x, applied first
    yaw: float  # about y
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    wave: tuple[float, float, float]  # colour band wave vector (cycles per unit), local frame


def _rotation(tilt_deg: float, yaw_deg: float) -> Tensor:
    """Local-to-world rotation Ry(yaw) @ Rx(tilt)."""
    a, b = math.radians(tilt_deg), math.radians(yaw_deg)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    return ry @ rx


def _sphere(p: Tensor, size: tuple[float, ...]) -> Tensor:
    return p.norm(dim=-1) - size[0]


def _box(p: Tensor, size: tuple[float, ...]) -> Tensor:
    q = p.abs() - p.new_tensor(size)
    return q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0)


def _cylinder(p: Tensor, size: tuple[float, ...]) -> Tensor:
    radius, half_height = size
    d = torch.stack([torch.hypot(p[:, 0], p[:, 2]) - radius, p[:, 1].abs() - half_height], -1)
    return d.clamp(min=0).norm(dim=-1) + d.amax(-1).clamp(max=0)


def _torus(p: Tensor, size: tuple[float, ...]) -> Tensor:
    ring, tube = size
    q = torch.stack([torch.hypot(p[:, 0], p[:, 2]) - ring, p[:, 1]], -1)
    return q.norm(dim=-1) - tube


def _capsule(p: Tensor, size: tuple[float, ...]) -> Tensor:
    half_length, radius = size
    along = p[:, 1] - p[:, 1].clamp(-half_length, half_length)  # offset from the nearest point of the segment
    return torch.stack([p[:, 0], along, p[:, 2]], -1).norm(dim=-1) - radius


DISTANCES: dict[str, Callable[[Tensor, tuple[float, ...]], Tensor]] = {
    "sphere": _sphere, "box": _box, "cylinder": _cylinder, "torus": _torus, "capsule": _capsule}


class Scene:
    """The union of its parts: signed distance, albedo of the nearest part, baked Lambertian colour."""

    def __init__(self, family: str, seed: int, parts: list[Part]) -> None:
        self.family, self.seed, self.parts = family, seed, parts
        self._rotations = torch.stack([_rotation(p.tilt, p.yaw) for p in parts])
        self._centers = torch.tensor([p.center for p in parts])

    def _local(self, x: Tensor) -> Tensor:
        """Points in every part's frame: [P, N, 3] (x @ R is R^T x for row vectors)."""
        if self._rotations.device != x.device or self._rotations.dtype != x.dtype:  # move once, not every step
            self._rotations, self._centers = self._rotations.to(x), self._centers.to(x)
        return (x[None] - self._centers[:, None]) @ self._rotations

    def _distances(self, local: Tensor) -> Tensor:
        return torch.stack([DISTANCES[p.kind](local[i], p.size) for i, p in enumerate(self.parts)])

    def sdf(self, x: Tensor) -> Tensor:
        """Signed distance [N] (negative inside) at points [N, 3]; a lower bound, as sphere tracing needs."""
        return self._distances(self._local(x)).amin(0)

    def albedo(self, x: Tensor) -> Tensor:
        """Colour [N, 3] of the part nearest to each point: two colours blended by smooth bands."""
        local = self._local(x)
        nearest = self._distances(local).argmin(0)
        colours = []
        for i, part in enumerate(self.parts):
            phase = 2 * math.pi * (local[i] @ local.new_tensor(part.wave))
            blend = (0.5 + 0.5 * torch.sin(phase))[:, None]
            c0, c1 = local.new_tensor(part.colors[0]), local.new_tensor(part.colors[1])
            colours.append(c0 + (c1 - c0) * blend)
        return torch.stack(colours)[nearest, torch.arange(len(x), device=x.device)]

    def radiance(self, x: Tensor, normals: Tensor) -> Tensor:
        """View-independent colour: albedo under the fixed light with an ambient share."""
        light = normals.new_tensor(LIGHT)
        light = light / light.norm()
        lambert = AMBIENT + (1 - AMBIENT) * (normals @ light).clamp(min=0)
        return self.albedo(x) * lambert[:, None]

    def to_dict(self) -> dict:
        return {"family": self.family, "seed": self.seed, "parts": [asdict(p) for p in self.parts]}

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        try:
            parts = [Part(kind=p["kind"], size=tuple(p["size"]), center=tuple(p["center"]), tilt=float(p["tilt"]),
                          yaw=float(p["yaw"]), colors=(tuple(p["colors"][0]), tuple(p["colors"][1])),
                          wave=tuple(p["wave"])) for p in data["parts"]]
            if any(p.kind not in DISTANCES for p in parts):
                raise KeyError("kind")
            return cls(str(data["family"]), int(data["seed"]), parts)
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise UserError(f"scene description is malformed ({exc!r}); regenerate it with "
                            "scripts/make-synthetic-scene.py.") from None


# --- families -------------------------------------------------------------------------------------------
def _colors(rng: np.random.Generator) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Two saturated, clearly non-white colours (white is the evaluation background)."""
    hues = rng.uniform(0, 1) + np.array([0.0, rng.uniform(0.15, 0.45)])
    pair = []
    for hue in hues:
        rgb = 0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))
        pair.append(tuple(float(v) for v in 0.12 + 0.7 * rgb))
    return pair[0], pair[1]


def _wave(rng: np.random.Generator) -> tuple[float, float, float]:
    direction = rng.normal(size=3)
    return tuple(float(v) for v in direction / np.linalg.norm(direction) * rng.uniform(1.5, 3.0))


def _part(rng: np.random.Generator, kind: str, size, center, tilt: float = 0.0, yaw: float = 0.0) -> Part:
    return Part(kind, tuple(float(s) for s in size), tuple(float(c) for c in center), float(tilt), float(yaw),
                _colors(rng), _wave(rng))


def _primitive(rng: np.random.Generator) -> list[Part]:
    kind = ("sphere", "box", "cylinder")[rng.integers(3)]
    size = {"sphere": (rng.uniform(0.42, 0.52),), "box": rng.uniform(0.25, 0.36, 3),
            "cylinder": (rng.uniform(0.28, 0.38), rng.uniform(0.3, 0.42))}[kind]
    return [_part(rng, kind, size, (0, 0, 0), rng.uniform(-25, 25), rng.uniform(0, 90))]


def _union(rng: np.random.Generator) -> list[Part]:
    """A box body, a sphere resting off-centre on it and a cylinder poking out of one side: asymmetric."""
    body = rng.uniform([0.28, 0.17, 0.22], [0.36, 0.24, 0.3])
    head = rng.uniform(0.17, 0.22)
    yaw = rng.uniform(-20, 20)
    arm = (rng.uniform(0.08, 0.11), rng.uniform(0.14, 0.18))
    return [
        _part(rng, "box", body, (-0.05, -0.12, 0), 0, yaw),
        _part(rng, "sphere", (head,),
              (rng.uniform(-0.2, 0.05), -0.12 + body[1] + 0.6 * head, rng.uniform(-0.08, 0.08))),
        _part(rng, "cylinder", arm, (-0.05 + body[0] + 0.5 * arm[1], rng.uniform(-0.15, -0.05), 0), 90,
              90 + yaw + rng.uniform(-15, 15)),
    ]


def _nonconvex(rng: np.random.Generator) -> list[Part]:
    """A torus tilted towards the input camera (its hole is visible) with a sphere threaded on one side."""
    ring, tube = rng.uniform(0.36, 0.44), rng.uniform(0.11, 0.14)
    yaw = rng.uniform(-40, 40)
    tilt = rng.uniform(50, 70)
    bead_angle = rng.uniform(0, 2 * np.pi)
    bead_local = torch.tensor([ring * math.cos(bead_angle), 0.0, ring * math.sin(bead_angle)])
    bead = (_rotation(tilt, yaw) @ bead_local).tolist()
    return [_part(rng, "torus", (ring, tube), (0, 0, 0), tilt, yaw),
            _part(rng, "sphere", (tube * rng.uniform(1.4, 1.7),), bead)]


def _thin(rng: np.random.Generator) -> list[Part]:
    """A stool: a round seat on three or four thin splayed legs."""
    seat_radius, seat_y = rng.uniform(0.34, 0.42), rng.uniform(0.18, 0.26)
    legs = int(rng.integers(3, 5))
    leg_radius, splay = rng.uniform(0.025, 0.035), rng.uniform(6, 12)
    floor = -0.58
    half_length = (seat_y - floor) / 2 / math.cos(math.radians(splay))
    parts = [_part(rng, "cylinder", (seat_radius, 0.045), (0, seat_y, 0), 0, 0)]
    start = rng.uniform(0, 360)
    for k in range(legs):
        yaw = start + 360 * k / legs
        mid_r = 0.7 * seat_radius + half_length * math.sin(math.radians(splay))
        center = (mid_r * math.sin(math.radians(yaw)), (seat_y + floor) / 2, mid_r * math.cos(math.radians(yaw)))
        # tilt about x then yaw: the leg's lower end points away from the seat's centre
        parts.append(_part(rng, "capsule", (half_length, leg_radius), center, -splay, yaw))
    return parts


RECIPES: dict[str, Callable[[np.random.Generator], list[Part]]] = {
    "primitive": _primitive, "union": _union, "nonconvex": _nonconvex, "thin": _thin}


def make_scene(family: str, seed: int = 0) -> Scene:
    """The scene of a family for a seed (deterministic)."""
    if family not in RECIPES:
        raise UserError(f"unknown scene family '{family}'; choose one of {', '.join(FAMILIES)}.")
    rng = np.random.default_rng([seed, FAMILIES.index(family)])
    return Scene(family, seed, RECIPES[family](rng))
