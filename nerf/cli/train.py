"""RealFusion reconstruction: fit a NeRF to one RGBA image, guided by Stable Diffusion and a learned token.

    python main.py --O --image_path examples/natural-images/cat/rgba.png --text "A high-resolution DSLR image of a <token>"

Data path: image -> cameras/rays -> field -> renderer -> objective (+ guidance) -> optimiser -> outputs,
assembled in `nerf/build.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from nerf.errors import one_line_errors
from nerf.option_checks import parse
from nerf.workspace import setup_logging


def run(argv: Sequence[str] | None = None) -> int:
    from nerf.build import open_run
    from nerf.inference_options import inference_options
    from nerf.report import write_report

    opt = parse(argv)
    if opt.inference:  # a trained workspace: its own options, the command line only for the outputs
        opt = inference_options(opt)
    with open_run(opt) as built:  # the workspace is this run's until the block ends, however it ends
        try:
            if not opt.inference:
                built.trainer.train()
            with built.trainer.weights_for_outputs():
                write_outputs(opt, built)
            write_report(built.workspace, opt)
        except KeyboardInterrupt:
            print("\n" + interrupted_message(built.workspace), file=sys.stderr)  # a line of its own, after the bar
            return 130
    return 0


def interrupted_message(workspace: Path) -> str:
    """What a Ctrl-C leaves: the last checkpoint (writes are atomic, so it is whole) or nothing to resume from."""
    from nerf.checkpoint import LATEST

    latest = workspace / "checkpoints" / LATEST
    if latest.is_file():
        return f"interrupted; the last checkpoint {latest} is intact: run the same command to resume from it."
    return "interrupted before the first checkpoint; there is nothing to resume, run the command again to start."


def write_outputs(opt, built) -> None:
    """The videos (or, --test_on_real_data, the real-view frames) and, when asked for, the mesh."""
    from nerf import outputs

    out = opt.output
    if opt.test and out.test_on_real_data:
        outputs.render_real_views(built.frames, size=opt.data.HW_real,
                                  out_dir=built.workspace / "results" / f"{out.save_test_name}_real")
    elif not opt.mesh_only:
        outputs.render_videos(built.frames, built.real_view, size=out.HW_vis, results_dir=built.workspace / "results",
                              name=out.save_test_name)
    if out.save_mesh or opt.mesh_only:
        outputs.export_mesh(built.renderer, out_dir=built.workspace / "mesh", resolution=out.mesh_resolution,
                            threshold=out.mesh_threshold, decimate_target=out.mesh_decimate_target)


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    try:
        return run(argv)
    except KeyboardInterrupt:  # before the run was built: nothing was written
        print("interrupted", file=sys.stderr)
        return 130

