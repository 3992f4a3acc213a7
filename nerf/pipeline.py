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

import codecs
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nerf.checkpoint import LATEST, load_checkpoint
from nerf.errors import UserError
from nerf.fileio import write_text_atomic
from nerf.options import DEFAULT_PROMPT
from nerf.initializer_file import RESULT_FILE, read_initializer

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER = "_object_"
# RealFusion's single-image textual-inversion recipe (effective learning rate 5e-4 * 4 = 2e-3).
TI_RECIPE = ("--train_batch_size=1", "--gradient_accumulation_steps=4",
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

    `copies` are (source, target) files put in place just before the command runs. What made the output is recorded
    beside it (`record`): the content of the `inputs` files and the `settings` (the arguments, unless the stage
    names fewer), so that an output made from other inputs is never taken as this stage's. A stage whose output
    was made from other inputs is redone when `redo_when_changed` (cheap, derived outputs), else refused."""

    name: str
    program: tuple[str, ...]
    args: tuple[str, ...]
    output: Path
    min_steps: int = 0
    copies: tuple[tuple[Path, Path], ...] = ()
    inputs: tuple[Path, ...] = ()
    settings: tuple[str, ...] | None = None
    redo_when_changed: bool = False
    record_path: Path | None = None  # default: beside the output

    @property
    def argv(self) -> list[str]:
        return [*self.program, *self.args]

    @property
    def record(self) -> Path:
        return self.record_path or self.output.with_name(self.output.name + ".made.json")

    def made(self) -> dict[str, Any]:
        """What this stage's output is made from, as it would be now (the inputs' contents, in order: the same file
        named by another path is the same input)."""
        return {"inputs": [file_hash(path) for path in self.inputs],
                "settings": list(self.args if self.settings is None else self.settings)}

    def changed(self) -> list[str]:
        """What differs between the recorded making of the output and this stage's (nothing when either the output
        or its record is missing: an output from before records were kept is taken as it is)."""
        if not (self.output.is_file() and self.record.is_file()):
            return []
        try:
            recorded = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return [f"unreadable {self.record}"]
        now = self.made()
        if not isinstance(recorded, dict):
            return [f"unreadable {self.record}"]
        before = recorded.get("inputs")
        before = before if isinstance(before, list) and len(before) == len(self.inputs) else [None] * len(self.inputs)
        differ = [path.name for path, digest, old in zip(self.inputs, now["inputs"], before) if digest != old]
        if recorded.get("settings") != now["settings"]:
            differ.append("options " + " ".join(sorted(set(map(str, now["settings"])) ^
                                                       set(map(str, recorded.get("settings") or [])))))
        return differ

    def write_record(self) -> None:
        """Record what made the output (and, for training, the step it holds)."""
        made = self.made()
        if self.min_steps:
            made["step"] = int(load_checkpoint(self.output)["global_step"])
        write_text_atomic(self.record, json.dumps(made, indent=1) + "\n")

    def complete(self) -> bool:
        """The output is there, made from these inputs (and, for a training stage, its checkpoint has trained
        enough iterations)."""
        if not self.output.is_file() or self.changed():
            return False
        return self.min_steps == 0 or int(load_checkpoint(self.output)["global_step"]) >= self.min_steps


def file_hash(path: Path) -> str | None:
    """The SHA-256 of a file's bytes; None when there is no such file."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def place_copies(stage: Stage) -> None:
    """Put the stage's copies in place."""
    for source, target in stage.copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def run(stage: Stage, **subprocess_options: Any) -> subprocess.CompletedProcess:
    """Put the stage's copies in place and run its command.

    Stages run in the caller's working directory, like its own file checks (`complete`, `place_copies`): a
    relative path in a stage means the same file to both (the suite's default workspace is relative)."""
    place_copies(stage)
    return subprocess.run(stage.argv, **subprocess_options)


class Interrupted(Exception):
    """Ctrl-C reached a running stage, which has then saved what it had and exited."""

    def __init__(self, stage: Stage) -> None:
        super().__init__(stage.name)
        self.stage = stage


def run_shown(stage: Stage) -> tuple[int, str]:
    """Run the stage with its stderr (its progress) shown as it comes; its exit status and last non-empty line.

    The stage runs in its own process group, so a Ctrl-C in the terminal reaches only this process, which passes
    it on and waits: the stage saves and exits in its own time (killing it would lose its work and leave its
    workspace lock behind). Raises `Interrupted` once it has exited."""
    place_copies(stage)
    child = subprocess.Popen(stage.argv, stderr=subprocess.PIPE, process_group=0)  # in the caller's directory
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail, interrupted = "", False
    with child:
        while True:
            try:
                data = os.read(child.stderr.fileno(), 1 << 16)
                if not data:  # the stage closed its stderr: it is exiting
                    child.wait()
                    break
                chunk = decoder.decode(data)
                tail = (tail + chunk)[-4096:]
                sys.stderr.write(chunk)
                sys.stderr.flush()
            except KeyboardInterrupt:
                interrupted = True
                child.send_signal(signal.SIGINT)
    if interrupted:
        raise Interrupted(stage)
    last = [line for line in tail.replace("\r", "\n").splitlines() if line.strip()] or ["no message"]
    return child.returncode, last[-1]


def ensure(stage: Stage) -> Path:
    """The stage's output, running the stage first unless it is complete (the command is shown on stderr, quoted
    to be pasted, then the stage's own output).

    A stage's own one-line error (exit status 2) becomes a `UserError` naming the stage; any other failure, or a
    run that leaves the stage incomplete, is a RuntimeError with the last line the stage printed."""
    changed = stage.changed()
    if changed and not stage.redo_when_changed:
        raise UserError(f"stage {stage.name}: {stage.output} was made from other inputs (changed: "
                        f"{', '.join(changed)}); run with --restart_from {stage.name} to redo it and the stages after "
                        f"it, or use a new --workspace.")
    if not stage.complete():
        print(f"[{stage.name}] {shlex.join(stage.argv)}", file=sys.stderr, flush=True)
        code, last = run_shown(stage)  # the old record stays until the new output is whole: a failed run is redone
        if code == 2:
            raise UserError(f"stage {stage.name}: {last.removeprefix('error: ')}")
        if code == 0 and stage.output.is_file():
            stage.write_record()
        if code != 0 or not stage.complete():
            raise RuntimeError(f"stage {stage.name} failed with exit code {code}: {last}")
    return stage.output


# --- the stages ---------------------------------------------------------------------------------------------------

def prepare_input(photo: Path, folder: Path, *, mask_path: Path | None = None) -> Stage:
    """Mask (given, else rembg when installed, else GrabCut), pad and recentre the photo into folder/rgba.png."""
    args = ["--image_path", str(photo), "--output_dir", str(folder), "--overwrite"]
    method: tuple[str, ...] = ()
    if mask_path is not None:
        args += ["--mask_path", str(mask_path)]
    elif importlib.util.find_spec("rembg") is not None:
        method = ("--method", "rembg")
    photos = (photo,) if mask_path is None else (photo, mask_path)
    return Stage("input", script("scripts", "extract-mask.py"), (*args, *method), folder / "rgba.png", inputs=photos,
                 settings=method)  # the photos by content: the same files named by other paths are the same input


def pick_initializer(rgba: Path, *, clip_model: str | None = None) -> Stage:
    """The CLIP noun closest to the input, written to token_autoinit.txt beside it."""
    clip = ("--clip_model", clip_model) if clip_model else ()
    return Stage("autoinit", script("textual-inversion", "autoinit.py"), (*clip, "get_initialization", str(rgba)),
                 rgba.parent / RESULT_FILE, inputs=(rgba,), redo_when_changed=True)


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
    templates: str = "object"  # --learnable_property: the original's object templates, or "reconstruction"


def learn_token(rgba: Path, word: str, folder: Path, settings: TokenSettings) -> Stage:
    """Textual inversion on the input alone (other images beside it would be read as more photos of the object),
    from `word`, into folder/learned_embeds.bin."""
    if settings.steps < 1:
        raise UserError(f"textual inversion needs at least 1 step, got {settings.steps}.")
    data = folder / "data"
    resolution = settings.resolution or training_resolution(settings.model)
    args = [f"--pretrained_model_name_or_path={settings.model}", f"--train_data_dir={data}",
            f"--placeholder_token={PLACEHOLDER}", f"--initializer_token={word}", f"--resolution={resolution}",
            f"--max_train_steps={settings.steps}", f"--learnable_property={settings.templates}", *TI_RECIPE,
            f"--output_dir={folder}"]
    if settings.seed is not None:
        args.append(f"--seed={settings.seed}")
    if settings.mixed_precision is not None:
        args.append(f"--mixed_precision={settings.mixed_precision}")
    return Stage("token", script("textual-inversion", "textual_inversion.py"), tuple(args),
                 folder / "learned_embeds.bin", copies=((rgba, data / "rgba.png"),), inputs=(rgba,))


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
    return Stage("nerf", script("main.py"), args, workspace / "checkpoints" / LATEST, min_steps=iters,
                 inputs=(rgba, *([learned_embeds] if learned_embeds else [])), settings=without_iters(args))


def without_iters(args: Sequence[str]) -> tuple[str, ...]:
    """The arguments but --iters: more iterations continue a run from its checkpoint rather than make another."""
    kept, skip = [], False
    for arg in args:
        if not skip and arg != "--iters" and not arg.startswith("--iters="):
            kept.append(arg)
        skip = arg == "--iters"
    return tuple(kept)


def nerf_iters(main_args: Sequence[str]) -> int:
    """The iterations the NeRF stage trains with these extra main.py options (checked as main.py checks them)."""
    from nerf.option_checks import parse

    return parse([*NERF_RECIPE, *main_args]).train.iters


def export_mesh(workspace: Path) -> Stage:
    """The textured mesh of a trained workspace."""
    return Stage("mesh", script("main.py"), ("--mesh_only", "--workspace", str(workspace)),
                 workspace / "mesh" / "mesh.glb", inputs=(workspace / "checkpoints" / LATEST,), redo_when_changed=True,
                 record_path=workspace / "mesh.made.json")  # not in mesh/, whose every file the report lists


def evaluate(workspace: Path, out: Path) -> Stage:
    """The input-view metrics of a trained workspace (no learned metrics: nothing is downloaded)."""
    return Stage("evaluate", script("scripts", "evaluate.py"), (str(workspace), "--out", str(out), "--no_perceptual"),
                 out, inputs=(workspace / "checkpoints" / LATEST,), redo_when_changed=True)


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
