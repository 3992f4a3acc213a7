"""The photo-to-report pipeline: its stages, the one recipe of each, and how each knows it is done.

    photo -> prepare input -> pick initializer -> learn token -> reconstruct -> export mesh -> evaluate -> report

Every stage but the report is the command a user would type (``scripts/extract-mask.py``,
``textual-inversion/autoinit.py``, ``textual-inversion/textual_inversion.py``, ``main.py``,
``scripts/evaluate.py``), and its boundary is a file on disk, so each stage can be resumed or run by hand. A stage
function only plans: it returns a `Stage` (command + output + completion check) and runs nothing. The entry points
(`nerf.cli.reconstruct`, every job of `nerf.cli.sweep`, the evaluation suite's learned-token runs) plan with these
functions and run the stages with `run`; nothing else strings the stages together or spells a recipe.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nerf.checkpoint import LATEST, load_checkpoint
from nerf.errors import UserError
from nerf.options import DEFAULT_PROMPT
from nerf.initializer_file import RESULT_FILE, read_initializer

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER = "_object_"
# RealFusion's single-image textual-inversion recipe (effective learning rate 5e-4 * 4 = 2e-3).
TI_RECIPE = ("--learnable_property=object", "--train_batch_size=1", "--gradient_accumulation_steps=4",
             "--learning_rate=5.0e-04", "--scale_lr", "--lr_scheduler=constant", "--lr_warmup_steps=0",
             "--use_augmentations", "--only_save_embeds")
TI_STEPS = 3000
SD_RESOLUTION = 512  # the image size of a model that is not a local diffusers folder (Stable Diffusion v1.x)
NERF_RECIPE = ("--O",)


def script(*parts: str) -> tuple[str, ...]:
    """The command of one of the repository's documented scripts, with this interpreter."""
    return sys.executable, str(REPO.joinpath(*parts))


@dataclass(frozen=True)
class Stage:
    """One stage: its command, the file it leaves, and (for training) the iterations that file must hold.

    `copies` are (source, target) files put in place just before the command runs."""

    name: str
    program: tuple[str, ...]
    args: tuple[str, ...]
    output: Path
    min_steps: int = 0
    copies: tuple[tuple[Path, Path], ...] = ()

    @property
    def argv(self) -> list[str]:
        return [*self.program, *self.args]

    def complete(self) -> bool:
        """The output is there (and, for a training stage, its checkpoint has trained enough iterations)."""
        if not self.output.is_file():
            return False
        return self.min_steps == 0 or int(load_checkpoint(self.output)["global_step"]) >= self.min_steps


def run(stage: Stage, **subprocess_options: Any) -> subprocess.CompletedProcess:
    """Put the stage's copies in place and run its command from the repository root."""
    for source, target in stage.copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return subprocess.run(stage.argv, cwd=REPO, **subprocess_options)


def ensure(stage: Stage) -> Path:
    """The stage's output, running the stage first unless it is complete (the command is shown on stderr).

    A stage's own one-line error (exit status 2) becomes a `UserError` naming the stage; any other failure, or a
    run that leaves the stage incomplete, is a RuntimeError with the last line the stage printed."""
    if not stage.complete():
        print(f"[{stage.name}] {' '.join(stage.argv[1:])}", file=sys.stderr, flush=True)
        done = run(stage, stderr=subprocess.PIPE, text=True)
        last = ([line for line in done.stderr.splitlines() if line.strip()] or ["no message"])[-1]
        if done.returncode == 2:
            raise UserError(f"stage {stage.name}: {last.removeprefix('error: ')}")
        if done.returncode != 0 or not stage.complete():
            raise RuntimeError(f"stage {stage.name} failed with exit code {done.returncode}: {last}")
    return stage.output


# --- the stages ---------------------------------------------------------------------------------------------------

def prepare_input(photo: Path, folder: Path, *, mask_path: Path | None = None) -> Stage:
    """Mask (given, else rembg when installed, else GrabCut), pad and recentre the photo into folder/rgba.png."""
    args = ["--image_path", str(photo), "--output_dir", str(folder), "--overwrite"]
    if mask_path is not None:
        args += ["--mask_path", str(mask_path)]
    elif importlib.util.find_spec("rembg") is not None:
        args += ["--method", "rembg"]
    return Stage("input", script("scripts", "extract-mask.py"), tuple(args), folder / "rgba.png")


def pick_initializer(rgba: Path, *, clip_model: str | None = None) -> Stage:
    """The CLIP noun closest to the input, written to token_autoinit.txt beside it."""
    clip = ("--clip_model", clip_model) if clip_model else ()
    return Stage("autoinit", script("textual-inversion", "autoinit.py"), (*clip, "get_initialization", str(rgba)),
                 rgba.parent / RESULT_FILE)


def training_resolution(model: str) -> int:
    """The image size the model was trained at: read from a local diffusers folder, else Stable Diffusion's 512."""
    folder = Path(model)
    if not (folder / "model_index.json").is_file():
        return SD_RESOLUTION
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{folder} is not a readable diffusers model folder ({exc}).") from None
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


@dataclass(frozen=True)
class TokenSettings:
    """What a caller may choose about textual inversion; everything else is `TI_RECIPE`."""

    model: str
    steps: int = TI_STEPS
    resolution: int | None = None  # None: the model's own (`training_resolution`)
    seed: int | None = None
    mixed_precision: str | None = None  # None: textual_inversion.py's default


def learn_token(rgba: Path, word: str, folder: Path, settings: TokenSettings) -> Stage:
    """Textual inversion on the input alone (other images beside it would be read as more photos of the object),
    from `word`, into folder/learned_embeds.bin."""
    if settings.steps < 1:
        raise UserError(f"textual inversion needs at least 1 step, got {settings.steps}.")
    data = folder / "data"
    resolution = settings.resolution or training_resolution(settings.model)
    args = [f"--pretrained_model_name_or_path={settings.model}", f"--train_data_dir={data}",
            f"--placeholder_token={PLACEHOLDER}", f"--initializer_token={word}", f"--resolution={resolution}",
            f"--max_train_steps={settings.steps}", *TI_RECIPE, f"--output_dir={folder}"]
    if settings.seed is not None:
        args.append(f"--seed={settings.seed}")
    if settings.mixed_precision is not None:
        args.append(f"--mixed_precision={settings.mixed_precision}")
    return Stage("token", script("textual-inversion", "textual_inversion.py"), tuple(args),
                 folder / "learned_embeds.bin", copies=((rgba, data / "rgba.png"),))


@dataclass(frozen=True)
class PriorChoice:
    """The prior of the NeRF stage (``--guidance``) and its Zero-1-to-3 model when it uses one."""

    name: str = "sd"
    zero123_model: str | None = None

    @property
    def uses_sd(self) -> bool:
        """Stable Diffusion is part of the prior: it needs the prompt and its token (textual inversion)."""
        return "sd" in self.name.split("+")

    @property
    def args(self) -> tuple[str, ...]:
        model = ("--zero123_model", self.zero123_model) if self.zero123_model else ()
        return ("--guidance", self.name, *model)


def reconstruct(rgba: Path, workspace: Path, *, model: str, learned_embeds: Path | None,
                main_args: Sequence[str] = (), prior: PriorChoice = PriorChoice()) -> Stage:
    """`main.py --O` on the input with `prior`; with Stable Diffusion prompted with the learned token (without one,
    main.py reads the word of token_autoinit.txt beside the input); done when the latest checkpoint has trained
    every iteration."""
    iters = nerf_iters([*prior.args, *main_args])
    token = ("--learned_embeds_path", str(learned_embeds)) if learned_embeds is not None else ()
    args = (*NERF_RECIPE, "--image_path", str(rgba), *token, "--pretrained_model_name_or_path", model,
            "--text", DEFAULT_PROMPT, *prior.args, "--workspace", str(workspace), *main_args)
    return Stage("nerf", script("main.py"), args, workspace / "checkpoints" / LATEST, min_steps=iters)


def nerf_iters(main_args: Sequence[str]) -> int:
    """The iterations the NeRF stage trains with these extra main.py options (checked as main.py checks them)."""
    from nerf.option_checks import parse

    return parse([*NERF_RECIPE, *main_args]).train.iters


def export_mesh(workspace: Path) -> Stage:
    """The textured mesh of a trained workspace."""
    return Stage("mesh", script("main.py"), ("--mesh_only", "--workspace", str(workspace)),
                 workspace / "mesh" / "mesh.glb")


def evaluate(workspace: Path, out: Path) -> Stage:
    """The input-view metrics of a trained workspace (no learned metrics: nothing is downloaded)."""
    return Stage("evaluate", script("scripts", "evaluate.py"), (str(workspace), "--out", str(out), "--no_perceptual"),
                 out)


def report(workspace: Path, evaluation: Path) -> Path:
    """Rewrite the workspace's report.html with the evaluation in it (in this process: it only reads files)."""
    from nerf.options_file import load_options
    from nerf.report import write_report

    return write_report(workspace, load_options(workspace / "options.json"), evaluation=evaluation)


def initializer_word(rgba: Path) -> str:
    """The word the initializer stage left beside the input (read as main.py reads it)."""
    word = read_initializer(rgba.parent)
    if word is None:
        raise UserError(f"{rgba.parent} has no {RESULT_FILE}; write one word there or pass --initializer_token.")
    return word
