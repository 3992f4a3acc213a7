#!/usr/bin/env python
"""From a photo to a textured mesh in one resumable command.

    python scripts/reconstruct.py PHOTO --workspace DIR [--mask_path M] [--initializer_token WORD]
        [--pretrained_model_name_or_path MODEL] [--ti_steps N] [--skip_ti] [-- main.py options ...]

Stages, each run as the command a user would type and skipped when its output is already there and complete, so
that running the same command again after a crash or Ctrl-C continues where it stopped:

1. input     DIR/input/rgba.png: scripts/extract-mask.py (rembg when installed, else GrabCut; recentred)
2. autoinit  DIR/input/token_autoinit.txt: textual-inversion/autoinit.py (or the word of --initializer_token)
3. token     DIR/token/learned_embeds.bin: textual-inversion/textual_inversion.py, RealFusion's recipe
4. nerf      DIR/nerf: main.py --O (a partly trained workspace resumes from its checkpoint)
5. mesh      DIR/nerf/mesh/mesh.glb: main.py --mesh_only
6. evaluate  DIR/evaluation.json: scripts/evaluate.py on the workspace
7. report    DIR/nerf/report.html: rewritten at the end with the evaluation (main.py writes one after each stage)

--skip_ti uses the autoinit word itself in the prompt instead of a learned token.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]

from nerf.checkpoint import LATEST, load_checkpoint
from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.fileio import write_text_atomic
from nerf.options import DEFAULT_MODEL, DEFAULT_PROMPT
from nerf.options_file import load_options
from nerf.report import write_report

PLACEHOLDER = "_object_"


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
    p.add_argument("--ti_steps", type=int, default=None, help="textual-inversion steps (default: the recipe's 3000)")
    p.add_argument("--ti_resolution", type=int, default=None, help="textual-inversion image size (default 512)")
    p.add_argument("--skip_ti", action="store_true", help="prompt with the autoinit word, learn no token")
    return p.parse_args(argv[:split]), argv[split + 1:]


def run_stage(name: str, command: list[str]) -> None:
    """Run one stage's command; its own one-line error (exit 2) becomes the pipeline's."""
    print(f"[{name}] {' '.join(command[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or ["no message"]
        if done.returncode == 2:
            raise UserError(f"stage {name}: {lines[-1].removeprefix('error: ')}")
        raise RuntimeError(f"stage {name} failed with exit code {done.returncode}: {lines[-1]}")


def script(*parts: str) -> list[str]:
    return [sys.executable, str(REPO.joinpath(*parts))]


def trained_steps(workspace: Path) -> int:
    """Iterations in the workspace's checkpoint (0 when there is none)."""
    checkpoint = workspace / "checkpoints" / LATEST
    return int(load_checkpoint(checkpoint)["global_step"]) if checkpoint.is_file() else 0


def main_options(extra: list[str]) -> "object":
    """main.py's resolved options for the pipeline's run (to know its --iters)."""
    from nerf.option_checks import parse

    return parse(["--O", *extra])


def input_stage(args: argparse.Namespace, folder: Path) -> Path:
    rgba = folder / "rgba.png"
    if not rgba.is_file():
        command = [*script("scripts", "extract-mask.py"), "--image_path", str(args.photo), "--output_dir", str(folder),
                   "--overwrite"]
        if args.mask_path is not None:
            command += ["--mask_path", str(args.mask_path)]
        elif importlib.util.find_spec("rembg") is not None:
            command += ["--method", "rembg"]
        run_stage("input", command)
    return rgba


def initializer_stage(args: argparse.Namespace, rgba: Path) -> str:
    word_file = rgba.parent / "token_autoinit.txt"
    if args.initializer_token:
        write_text_atomic(word_file, args.initializer_token + "\n")
    elif not word_file.is_file():
        clip = ["--clip_model", args.clip_model] if args.clip_model else []
        run_stage("autoinit", [*script("textual-inversion", "autoinit.py"), *clip, "get_initialization", str(rgba)])
    return word_file.read_text(encoding="utf-8").split()[0]


def token_stage(args: argparse.Namespace, rgba: Path, word: str, folder: Path) -> Path:
    embeds = folder / "learned_embeds.bin"
    if not embeds.is_file():
        data = folder / "data"  # the input alone: other images beside it would be read as more photos
        data.mkdir(parents=True, exist_ok=True)
        (data / "rgba.png").write_bytes(rgba.read_bytes())
        steps = ["--max_train_steps", str(args.ti_steps)] if args.ti_steps else []
        size = ["--resolution", str(args.ti_resolution)] if args.ti_resolution else []
        run_stage("token", [*script("textual-inversion", "textual_inversion.py"), "--pretrained_model_name_or_path",
                            args.pretrained_model_name_or_path, "--train_data_dir", str(data), "--placeholder_token",
                            PLACEHOLDER, "--initializer_token", word, "--output_dir", str(folder),
                            "--only_save_embeds", *steps, *size])
    return embeds


def run(args: argparse.Namespace, extra: list[str]) -> Path:
    work = args.workspace
    if not args.photo.is_file():
        raise UserError(f"{args.photo} is not a photo file; give the path of an image (PNG, JPEG).")
    if args.ti_steps is not None and args.ti_steps < 1:
        raise UserError(f"--ti_steps must be at least 1, got {args.ti_steps}.")
    iters = main_options(extra).train.iters  # main.py's own checks run before any stage
    rgba = input_stage(args, work / "input")
    word = initializer_stage(args, rgba)
    prompt = ["--text", DEFAULT_PROMPT.replace("<token>", word)]
    if not args.skip_ti:
        prompt = ["--learned_embeds_path", str(token_stage(args, rgba, word, work / "token")), "--text", DEFAULT_PROMPT]
    nerf = work / "nerf"
    if trained_steps(nerf) < iters:
        run_stage("nerf", [*script("main.py"), "--O", "--image_path", str(rgba), "--workspace", str(nerf),
                           "--pretrained_model_name_or_path", args.pretrained_model_name_or_path, *prompt, *extra])
    if not (nerf / "mesh" / "mesh.glb").is_file():
        run_stage("mesh", [*script("main.py"), "--mesh_only", "--workspace", str(nerf)])
    report = work / "evaluation.json"
    if not report.is_file():
        run_stage("evaluate", [*script("scripts", "evaluate.py"), str(nerf), "--out", str(report), "--no_perceptual"])
    write_report(nerf, load_options(nerf / "options.json"), evaluation=report)
    return nerf


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(argv)
    nerf = run(args, extra)
    print(f"done: {nerf / 'report.html'} (videos in results/, mesh in mesh/, evaluation in "
          f"{args.workspace / 'evaluation.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
