#!/usr/bin/env python
"""From a photo to a textured mesh in one resumable command.

    python scripts/reconstruct.py PHOTO --workspace DIR [--mask_path M] [--initializer_token WORD]
        [--pretrained_model_name_or_path MODEL] [--ti_steps N] [--ti_templates T] [--skip_ti]
        [--prior sd|zero123|sd+zero123 [--zero123_model MODEL]] [-- main.py options ...]

Stages (planned by `nerf.pipeline`), each run as the command a user would type (shown quoted, then its progress)
and skipped when its output is already there, complete and made from the same inputs (recorded beside it), so that
running the same command again after a crash or Ctrl-C continues where it stopped. An output made from other inputs
(another photo, word or option) is refused in one line, naming --restart_from STAGE; the mesh and the evaluation are
redone whenever the checkpoint changed. Ctrl-C lets the running stage save and exit, then exits with status 130:

1. input     DIR/input/rgba.png: scripts/extract-mask.py (rembg when installed, else GrabCut; recentred)
2. autoinit  DIR/input/token_autoinit.txt: the word of --initializer_token, else of a token_autoinit.txt beside
              PHOTO, else textual-inversion/autoinit.py (CLIP; its noun embeddings are made on first use)
3. token     DIR/token/learned_embeds.bin: textual-inversion/textual_inversion.py, RealFusion's recipe
4. nerf      DIR/nerf: main.py --O (a partly trained workspace resumes from its checkpoint)
5. mesh      DIR/nerf/mesh/mesh.glb: main.py --mesh_only
6. evaluate  DIR/evaluation.json: scripts/evaluate.py on the workspace
7. report    DIR/nerf/report.html: rewritten at the end with the evaluation (main.py writes one after each stage)

--skip_ti uses the autoinit word itself in the prompt instead of a learned token. --prior picks the NeRF stage's
prior: sd (Stable Diffusion with the learned token, RealFusion's), zero123 (Zero-1-to-3, conditioned on the input view
and the camera: no prompt, so no autoinit and no textual inversion) or sd+zero123 (both, as Magic123).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

from nerf import pipeline
from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.fileio import write_text_atomic
from nerf.initializer_file import RESULT_FILE, read_initializer
from nerf.options import DEFAULT_MODEL

PRIORS = ("sd", "zero123", "sd+zero123")
STAGES = ("input", "autoinit", "token", "nerf", "mesh", "evaluate", "report")  # in the order they run


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The pipeline's own flags, and everything after `--` for main.py."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photo", type=Path, help="the photo of the object (any PIL-readable image)")
    p.add_argument("--workspace", type=Path, required=True, help="folder of every stage's outputs")
    p.add_argument("--mask_path", type=Path, default=None, help="an existing object mask (default: extract one)")
    p.add_argument("--initializer_token", default=None, help="the token's initial word (default: autoinit.py)")
    p.add_argument("--clip_model", default=None, help="CLIP model of autoinit.py (its default when not given)")
    p.add_argument("--pretrained_model_name_or_path", default=DEFAULT_MODEL, help="Stable Diffusion model")
    p.add_argument("--ti_steps", type=int, default=pipeline.TI_STEPS, help="textual-inversion steps")
    p.add_argument("--ti_resolution", type=int, default=None,
                   help="textual-inversion image size (default: the model's own, 512 for a hub model)")
    p.add_argument("--ti_templates", choices=("object", "reconstruction"), default="object",
                   help="captions the token is learned in: object (the original's templates) or reconstruction "
                        "(main.py's default prompt at the input view); textual_inversion.py's --learnable_property")
    p.add_argument("--skip_ti", action="store_true", help="prompt with the autoinit word, learn no token")
    p.add_argument("--prior", choices=PRIORS, default="sd",
                   help="prior of the NeRF stage (default sd); zero123 needs no prompt: no autoinit, no token")
    p.add_argument("--zero123_model", default=None,
                   help="Zero-1-to-3 model of --prior zero123 / sd+zero123: a hub id (e.g. kxic/zero123-xl) or a "
                        "folder")
    p.add_argument("--restart_from", choices=STAGES[:-1], default=None,
                   help="delete the outputs of this stage and of the stages after it, then run them again (needed "
                        "when the workspace's outputs were made from other inputs)")
    return p.parse_args(argv[:split]), argv[split + 1:]


def later_stages(args: argparse.Namespace, extra: Sequence[str], rgba: Path) -> list[pipeline.Stage]:
    """Token (unless --skip_ti or a prior without Stable Diffusion), NeRF, mesh and evaluation of a prepared input
    whose initializer word is known."""
    work = args.workspace
    stages = []
    embeds = None
    prior = prior_choice(args)
    if prior.uses_sd and not args.skip_ti:
        settings = pipeline.TokenSettings(args.pretrained_model_name_or_path, steps=args.ti_steps,
                                          resolution=args.ti_resolution, templates=args.ti_templates)
        stages.append(pipeline.learn_token(rgba, pipeline.initializer_word(rgba), work / "token", settings))
        embeds = stages[-1].output
    nerf = work / "nerf"  # the layout `run` reports from
    stages += [pipeline.reconstruct(rgba, nerf, model=args.pretrained_model_name_or_path, learned_embeds=embeds,
                                    main_args=extra, prior=prior),
               pipeline.export_mesh(nerf), pipeline.evaluate(nerf, work / "evaluation.json")]
    return stages


def prior_choice(args: argparse.Namespace) -> pipeline.PriorChoice:
    """--prior and --zero123_model, checked together."""
    prior = pipeline.PriorChoice(args.prior, args.zero123_model)
    if "zero123" in args.prior and not args.zero123_model:
        raise UserError(f"--prior {args.prior} needs --zero123_model: a hub id (e.g. kxic/zero123-xl) or a local "
                        f"Zero-1-to-3 folder in its diffusers layout.")
    if args.zero123_model and "zero123" not in args.prior:
        raise UserError(f"--zero123_model is used only by --prior zero123 or sd+zero123, not by --prior {args.prior}.")
    return prior


def given_word(args: argparse.Namespace) -> str | None:
    """--initializer_token, else the word of a token_autoinit.txt beside the photo (every bundled example has one,
    so the quick start needs neither CLIP nor its noun embeddings); None: autoinit chooses."""
    if args.initializer_token:
        return args.initializer_token
    word = read_initializer(args.photo.parent)
    if word:
        print(f"[autoinit] the word '{word}' of {args.photo.parent / RESULT_FILE}", file=sys.stderr, flush=True)
    return word


def restart_from(workspace: Path, stage: str) -> None:
    """Delete what `stage` and the stages after it wrote (their outputs and records) in the workspace."""
    nerf = workspace / "nerf"
    written = {"input": [workspace / "input"], "autoinit": list((workspace / "input").glob(f"{RESULT_FILE}*")),
               "token": [workspace / "token"], "nerf": [nerf], "mesh": [nerf / "mesh", nerf / "mesh.made.json"],
               "evaluate": list(workspace.glob("evaluation.json*"))}
    for name in STAGES[STAGES.index(stage):-1]:
        for path in written[name]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def run(args: argparse.Namespace, extra: list[str]) -> Path:
    if not args.photo.is_file():
        raise UserError(f"{args.photo} is not a photo file; give the path of an image (PNG, JPEG).")
    if args.workspace.exists() and not args.workspace.is_dir():
        raise UserError(f"--workspace {args.workspace} is a file; give a folder (new or from an earlier run).")
    if args.ti_steps < 1:
        raise UserError(f"--ti_steps must be at least 1, got {args.ti_steps}.")
    prior = prior_choice(args)
    pipeline.nerf_iters([*prior.args, *extra])  # main.py's own checks, before any stage runs
    if args.restart_from:
        restart_from(args.workspace, args.restart_from)
    inputs = pipeline.prepare_input(args.photo, args.workspace / "input", mask_path=args.mask_path)
    pipeline.ensure(inputs)
    rgba = inputs.output
    word = given_word(args)
    if word:
        write_text_atomic(rgba.parent / RESULT_FILE, word + "\n")
    if prior.uses_sd:  # the prompt's word: Zero-1-to-3 alone has no prompt
        pipeline.ensure(pipeline.pick_initializer(rgba, clip_model=args.clip_model))
    for stage in later_stages(args, extra, rgba):
        pipeline.ensure(stage)
    nerf = args.workspace / "nerf"
    pipeline.report(nerf, args.workspace / "evaluation.json")
    return nerf


def interrupted_message(stage: str | None) -> str:
    """What a Ctrl-C leaves: the stages still to run (from the interrupted one), and how to run them."""
    if stage is None:
        return "interrupted between stages; run the same command to continue from there."
    left = ", ".join(STAGES[STAGES.index(stage):])
    return (f"interrupted during stage {stage}, which saved what it had and exited; left: {left}; run the same "
            f"command to continue from there.")


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(argv)
    for name in ("photo", "mask_path", "workspace"):  # the stages run from the repository root
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).absolute())
    try:
        nerf = run(args, extra)
    except pipeline.Interrupted as stopped:
        print(interrupted_message(stopped.stage.name), file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # between stages: each finished one is complete on disk
        print(interrupted_message(None), file=sys.stderr)
        return 130
    print(f"done: {nerf / 'report.html'} (videos in results/, mesh in mesh/, evaluation in "
          f"{args.workspace / 'evaluation.json'})")
    return 0
