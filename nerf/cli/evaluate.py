"""Evaluate reconstructions: input view, novel views, geometry; or run the synthetic benchmark.

    python scripts/evaluate.py WORKSPACE [--gt_mesh MESH] [--gt_views DIR] [--out report.json]
    python scripts/evaluate.py --compare WS_A WS_B ... [--gt_mesh MESH] [--gt_views DIR] [--out compare.json]
    python scripts/evaluate.py --suite synthetic [--device cuda] [--size reduced|default] [--out suite.json]
    python scripts/evaluate.py --suite synthetic --guidance toy --toy_prior PRIOR --class_bound [--out FILE]

A workspace is the --workspace folder of a main.py run (options.json + checkpoints/latest.pth); it is rendered
with its averaged (EMA) weights. The input view is compared with the run's --image_path (or --image_path here).
--gt_views holds RGBA renders of the circular validation path (view k at azimuth k/N * 360 degrees, view 0 at the
input camera) and --gt_mesh a mesh in the reconstruction's world frame; scripts/make-synthetic-scene.py writes both.
The suite makes every synthetic scene, trains a prior-free and an oracle-guided reconstruction of each and scores
them (reduced size: a CPU run of some minutes; default size: the reconstruction's default options, for a GPU).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

import torch

from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.evaluation.evaluate import EvaluationSettings, evaluate_workspace
from nerf.evaluation.figure import orbit_figure
from nerf.guidance.oracle import DEFAULT_STRENGTH
from nerf.evaluation.perceptual import DEFAULT_CLIP_MODEL
from nerf.evaluation.report import comparison_table, write_json
from nerf.scenes.procedural import FAMILIES
from nerf.evaluation.reconstruct import (MODES, PRIOR_MODES, TOY_GUIDANCE_SCALE, TOY_PRIOR_WEIGHT,
                                         TOY_TI_GUIDANCE_SCALE,
                                         TOY_ZERO123_GUIDANCE_SCALE, TOY_ZERO123_WEIGHT, ZERO123_MODES, Zero123Run)
from nerf.evaluation.class_bound import class_bound
from nerf.evaluation.suite import SUITE_SIZES, TrainedPrior, run_suite
from nerf.guidance.zero123_model import check_folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("workspace", nargs="?", type=Path, help="a reconstruction workspace")
    what.add_argument("--compare", nargs="+", type=Path, metavar="WORKSPACE", help="several workspaces side by side")
    what.add_argument("--suite", choices=["synthetic"], help="the synthetic benchmark")
    parser.add_argument("--gt_mesh", type=Path, help="ground-truth mesh in the reconstruction's frame")
    parser.add_argument("--gt_views", type=Path, help="folder of ground-truth RGBA renders of the validation path")
    parser.add_argument("--image_path", type=Path, help="input RGBA (default: the workspace's --image_path)")
    parser.add_argument("--orbit_figure", type=Path, metavar="PNG",
                        help="with --compare and --gt_views: a PNG of each workspace's orbit renders (one row each, "
                             "in the order given) above the ground-truth views")
    parser.add_argument("--out", type=Path, help="JSON report (default: evaluation.json, compare.json or suite.json)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--mesh_resolution", type=int, help="density grid of the mesh (default: the workspace's)")
    parser.add_argument("--surface_points", type=int, default=EvaluationSettings.surface_points)
    parser.add_argument("--voxel_resolution", type=int, default=EvaluationSettings.voxel_resolution)
    parser.add_argument("--no_perceptual", action="store_true", help="do not try to load LPIPS and CLIP")
    parser.add_argument("--clip_model", default=DEFAULT_CLIP_MODEL, help="CLIP vision model: hub id or folder")
    suite = parser.add_argument_group("suite")
    suite.add_argument("--size", choices=sorted(SUITE_SIZES), default="reduced")
    suite.add_argument("--scenes", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="scene families")
    suite.add_argument("--work_dir", type=Path, default=Path("outputs/evaluation-suite"),
                       help="scenes and workspaces of the suite")
    suite.add_argument("--seeds", nargs="+", type=int, default=None,
                       help="seeds of every run (default: 0, and 0 1 with --guidance toy); without a prior the scenes "
                            "are the families' instances of the first seed")
    suite.add_argument("--instances", type=int, default=2,
                       help="held-out instances per family of the toy prior's runs (--guidance toy)")
    suite.add_argument("--oracle_strength", type=float, default=DEFAULT_STRENGTH)
    suite.add_argument("--guidance", choices=["oracle", "toy"], default="oracle",
                       help="oracle: prior-free and oracle runs; toy: also score distillation from --toy_prior with "
                            "each scene's word (toy) and with a token learned from the input view (toy_ti), and "
                            "with --toy_zero123 from it alone (zero123) and joined with the word run (joint)")
    suite.add_argument("--modes", nargs="+", choices=[*MODES, *PRIOR_MODES], default=None,
                       help="runs per scene (default: every mode of --guidance)")
    suite.add_argument("--toy_prior", type=Path, default=REPO / "examples" / "toy-prior",
                       help="a prior written by scripts/train-toy-prior.py")
    suite.add_argument("--guidance_scale", type=float, default=TOY_GUIDANCE_SCALE,
                       help="of the toy prior's class-word runs, toy and joint (default %(default)s, measured for a "
                            "64-pixel prior)")
    suite.add_argument("--ti_guidance_scale", type=float, default=TOY_TI_GUIDANCE_SCALE,
                       help="of the toy prior's learned-token runs, toy_ti (default %(default)s: strong guidance "
                            "replaces the instance a token carries by its class; measured, README)")
    suite.add_argument("--toy_lambda_prior", type=float, default=TOY_PRIOR_WEIGHT,
                       help="SDS weight of the toy prior's runs (default 2^-12, measured for a 64-pixel prior)")
    suite.add_argument("--toy_zero123", type=Path, default=None,
                       help="a toy Zero-1-to-3 of --toy_prior's world (scripts/train-toy-zero123.py): modes zero123 "
                            "and joint")
    suite.add_argument("--toy_zero123_guidance_scale", type=float, default=TOY_ZERO123_GUIDANCE_SCALE,
                       help="of the toy Zero-1-to-3's runs (default %(default)s: main.py's, not measured here)")
    suite.add_argument("--toy_lambda_zero123", type=float, default=TOY_ZERO123_WEIGHT,
                       help="Zero-1-to-3 SDS weight of the zero123 and joint runs (default 2.5 x 2^-12: of 40, 10 "
                            "and 2.5 x 2^-12 the one that kept the input view best, README)")
    suite.add_argument("--ti_steps", type=int, default=500, help="textual-inversion steps of the toy_ti runs")
    suite.add_argument("--ti_initializer", default="dog", help="an unrelated word the toy_ti token starts from")
    suite.add_argument("--ti_templates", choices=("object", "reconstruction"), default="object",
                       help="captions the toy_ti token is learned in: object (the original's templates) or "
                            "reconstruction (main.py's prompt at the input view)")
    suite.add_argument("--main_args", default="", help="more main.py flags for every run, e.g. '--legacy sds_unscaled'")
    suite.add_argument("--class_bound", action="store_true",
                       help="with --guidance toy: train nothing; score every training instance of a class as the "
                            "reconstruction of the suite's held-out instances of that class, with the suite's "
                            "metrics: what a prior that imagines the class can reach (default --out class_bound.json)")
    suite.add_argument("--retrain", action="store_true",
                       help="train every run again, also one the work folder holds finished with the same arguments "
                            "and inputs (by default such a run is only evaluated again)")
    suite.add_argument("--jobs", type=int, default=1,
                       help="runs in parallel worker processes (several share one GPU well; on a CPU, one per core)")
    return parser.parse_args(argv)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device cpu.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def settings_from(args: argparse.Namespace) -> EvaluationSettings:
    return EvaluationSettings(mesh_resolution=args.mesh_resolution, surface_points=args.surface_points,
                              voxel_resolution=args.voxel_resolution, perceptual=not args.no_perceptual,
                              clip_model=args.clip_model)


def suite_prior(args: argparse.Namespace) -> tuple[TrainedPrior | None, list[str]]:
    """The trained prior (with --guidance toy, even for prior-free runs alone: its held-out instances are the
    scenes) and the modes to run (by default the zero123 and joint modes when --toy_zero123 is given); a mode whose
    model is missing is a one-line error before anything runs."""
    toy = [mode for mode in PRIOR_MODES if args.toy_zero123 is not None or mode not in ZERO123_MODES]
    default = [*MODES[:1], *toy, *MODES[1:]] if args.guidance == "toy" else list(MODES)
    modes = args.modes or default
    needs_zero123 = [mode for mode in modes if mode in ZERO123_MODES]
    if needs_zero123 and args.toy_zero123 is None:
        raise UserError(f"mode {needs_zero123[0]} needs --toy_zero123 (a folder of scripts/train-toy-zero123.py).")
    if args.guidance != "toy" and not any(mode in PRIOR_MODES for mode in modes):
        return None, modes
    zero123 = None
    if args.toy_zero123 is not None:
        try:
            check_folder(args.toy_zero123)  # a wrong folder fails now, naming its file
        except UserError as exc:
            raise UserError(f"--toy_zero123: {exc}") from None
        zero123 = Zero123Run(args.toy_zero123, args.toy_zero123_guidance_scale, args.toy_lambda_zero123)
    return TrainedPrior.load(args.toy_prior, zero123=zero123, guidance_scale=args.guidance_scale,
                             ti_guidance_scale=args.ti_guidance_scale,
                             lambda_prior=args.toy_lambda_prior, ti_steps=args.ti_steps,
                             ti_initializer=args.ti_initializer, ti_templates=args.ti_templates), modes


def class_bound_report(args: argparse.Namespace) -> dict:
    """`nerf.evaluation.class_bound` over the suite's held-out instances, printed per instance and per family."""
    if args.guidance != "toy":
        raise UserError("--class_bound needs --guidance toy (and --toy_prior): it scores a trained prior's classes.")
    prior = TrainedPrior.load(args.toy_prior)
    result = class_bound(prior, SUITE_SIZES[args.size], args.scenes, args.instances)
    for key, row in result["per_instance"].items():
        print(f"{key} ({row['word']}, mean of {row['instances']}): " +
              ", ".join(f"{name} {value:.3f}" for name, value in row["mean"].items()))
    for family, row in result["per_family"].items():
        print(f"{family}: mean " + ", ".join(f"{name} {value:.3f}" for name, value in row["mean"].items()) +
              "; closest " + ", ".join(f"{name} {value:.3f}" for name, value in row["best"].items()))
    return {"prior": str(args.toy_prior), "size": args.size, **result}


def print_notices(reports: list[dict]) -> None:
    for notice in dict.fromkeys(n for report in reports for n in report.get("notices", [])):
        print(f"notice: {notice}", file=sys.stderr)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    device = pick_device(args.device)
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}.")
    if args.suite and args.class_bound:
        result = class_bound_report(args)
        out = args.out or Path("class_bound.json")
    elif args.suite:
        prior, modes = suite_prior(args)
        seeds = args.seeds or ([0, 1] if args.guidance == "toy" else [0])
        if args.instances < 1:
            raise UserError(f"--instances must be >= 1, got {args.instances}.")
        result = run_suite(args.work_dir, args.size, device, args.scenes, seeds, args.oracle_strength,
                           args.jobs, prior, modes, shlex.split(args.main_args), instances=args.instances,
                           retrain=args.retrain)
        print_notices([row["report"] for row in result["rows"]])
        print(f"\nsynthetic suite, size {args.size}, {result['settings']['card']}\n{result['table']}")
        print(f"\nmeans per family and mode\n{result['summary']}")
        out = args.out or Path("suite.json")
    else:
        workspaces = args.compare or [args.workspace]
        if args.orbit_figure is not None:
            if args.gt_views is None:
                raise UserError("--orbit_figure needs --gt_views (the ground-truth renders of the circular path).")
            print(f"wrote {orbit_figure(workspaces, args.gt_views, args.orbit_figure, device)}")
        reports = {str(ws): evaluate_workspace(ws, args.gt_mesh, args.gt_views, args.image_path,
                                               settings_from(args), device) for ws in workspaces}
        print_notices(list(reports.values()))
        print(comparison_table(reports))
        result = {"reports": reports} if args.compare else next(iter(reports.values()))
        out = args.out or Path("compare.json" if args.compare else "evaluation.json")
    write_json(out, result)
    print(f"wrote {out}")
    return 0

