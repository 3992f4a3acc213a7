#!/usr/bin/env python
"""Write procedural ground-truth scenes: an RGBA input view, a mesh and renders of the validation path.

    python scripts/make-synthetic-scene.py OUT --family union [--seed 0]   # one scene in OUT
    python scripts/make-synthetic-scene.py OUT --all [--seed 0]            # OUT/<family>-<seed> for every family

Families: primitive (one textured sphere, box or cylinder), union (box, sphere and cylinder), nonconvex (a torus
with a bead), thin (a stool on thin legs). The same family and seed always give the same files. Reconstruct one
with `python main.py --image_path OUT/rgba.png ...` and score it with
`python scripts/evaluate.py WORKSPACE --gt_mesh OUT/mesh.ply --gt_views OUT/views`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.scenes.files import Conventions, write_scene
from nerf.scenes.procedural import FAMILIES, make_scene
from nerf.options import DataOptions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = DataOptions()
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--family", choices=FAMILIES)
    which.add_argument("--all", action="store_true", help="every family, each in OUT/<family>-<seed>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input_size", type=int, default=512, help="pixels of rgba.png (square)")
    parser.add_argument("--view_size", type=int, default=defaults.HW_real, help="pixels of the validation views")
    parser.add_argument("--views", type=int, default=8, help="views on the circular validation path")
    parser.add_argument("--mesh_resolution", type=int, default=256, help="marching-cubes grid of mesh.ply")
    parser.add_argument("--pose_angle", type=float, default=defaults.pose_angle, help="as main.py's option")
    parser.add_argument("--radius_rot", type=float, default=defaults.orbit_radius, help="as main.py's option")
    parser.add_argument("--fovy", type=float, default=defaults.default_fovy,
                        help="vertical field of view: the mean of main.py's --fovy_range")
    return parser.parse_args(argv)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name, value in (("input_size", args.input_size), ("view_size", args.view_size), ("views", args.views),
                        ("mesh_resolution", args.mesh_resolution), ("radius_rot", args.radius_rot)):
        if value <= 0:
            raise UserError(f"--{name} must be > 0, got {value}.")
    if not 0 < args.fovy < 180:
        raise UserError(f"--fovy must be in (0, 180) degrees, got {args.fovy}.")
    conventions = Conventions(args.pose_angle, args.radius_rot, args.fovy)
    families = FAMILIES if args.all else (args.family,)
    for family in families:
        out = args.out / f"{family}-{args.seed}" if args.all else args.out
        write_scene(make_scene(family, args.seed), out, conventions, args.input_size, args.view_size,
                    args.views, args.mesh_resolution)
        print(f"wrote {out}")
    return 0

