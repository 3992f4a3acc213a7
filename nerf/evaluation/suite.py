"""The synthetic benchmark: for every scene family, a prior-free and an oracle-guided reconstruction of its input
view, each scored on the input view, the validation path and the ground-truth mesh.

With a trained toy prior the scenes are the prior's held-out instances (objects of a class it knows that it never
saw), and score distillation runs beside them: prompted with the class word (`toy`) and with a token learned by
textual inversion from the input view alone (`toy_ti`); with a toy Zero-1-to-3 of the same world, also from it
alone, conditioned on the input view (`zero123`), and from both priors on the same view (`joint`: the class word
for the toy prior). Every scene runs at every seed; the summary averages over instances and seeds per family and
mode.

The prior-free run sees only the front; the oracle-guided run is told the truth from every sampled camera. The
gap between them is the 3-D shape the guidance is responsible for, and the oracle's own score is what the rest of
the pipeline (field, renderer, losses, optimiser, mesh export) can reach when the guidance is perfect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from nerf import pipeline, workspace_lock
from nerf.errors import UserError
from nerf.evaluation.evaluate import EvaluationSettings, evaluate_workspace
from nerf.guidance.oracle import DEFAULT_STRENGTH
from nerf.checkpoint import LATEST
from nerf.evaluation.reconstruct import (MODES, PRIOR_MODES, TOY_GUIDANCE_SCALE, TOY_LAMBDA_MASK, TOY_PRIOR_WEIGHT,
                                         TOY_TI_GUIDANCE_SCALE, ZERO123_MODES, PriorRun, Zero123Run, reconstruction_args, train)
from nerf.option_checks import parse
from nerf.evaluation.report import format_table, lookup
from nerf.scenes.files import Conventions, write_scene
from nerf.scenes.procedural import FAMILIES, make_scene
from nerf.build import build_renderer
from nerf.options import Options
from nerf.toy_models.world import load_world

log = logging.getLogger("realfusion.suite")


@dataclass(frozen=True)
class SuiteSize:
    """Training size (a key of reconstruct.SIZES), ground-truth file sizes and evaluation settings."""

    train: str
    input_size: int
    view_size: int
    gt_mesh_resolution: int
    evaluation: EvaluationSettings
    views: int = 8


SUITE_SIZES = {
    "reduced": SuiteSize("reduced", input_size=128, view_size=32, gt_mesh_resolution=128,
                         evaluation=EvaluationSettings(surface_points=20_000, voxel_resolution=64, perceptual=False)),
    "default": SuiteSize("default", input_size=512, view_size=128, gt_mesh_resolution=256,
                         evaluation=EvaluationSettings()),
}
SUITE_COLUMNS = (("input PSNR", ("input_view", "psnr")), ("input IoU", ("input_view", "mask_iou")),
                 ("novel PSNR", ("novel_views", "psnr")), ("novel IoU", ("novel_views", "mask_iou")),
                 ("Chamfer-L1", ("geometry", "chamfer_l1")), ("F@2%", ("geometry", "fscore", "2%")),
                 ("volume IoU", ("geometry", "volume_iou")))


@dataclass(frozen=True)
class SuiteTask:
    """One entry of the suite: train one mode on one scene, then evaluate it (picklable for worker processes)."""

    scene: str
    scene_dir: Path
    workspace: Path
    mode: str
    size: str
    device: str
    seed: int
    oracle_strength: float
    prior: TrainedPrior | None = None
    extra_args: tuple[str, ...] = ()  # more main.py flags for every run
    retrain: bool = False  # train even when the workspace holds this run, finished (`finished_run`)


@dataclass(frozen=True)
class TrainedPrior:
    """A Stable-Diffusion-format prior that knows the suite's scenes (scripts/train-toy-prior.py): its folder,
    the word of each training and held-out instance, and the settings of its runs."""

    model: Path
    words: dict[str, str]  # "family:seed" -> the word of a training instance
    held_out: dict[str, str] = field(default_factory=dict)  # "family:seed" -> the word of a held-out instance
    guidance_scale: float = TOY_GUIDANCE_SCALE  # of the class word's runs (toy, joint)
    ti_guidance_scale: float = TOY_TI_GUIDANCE_SCALE  # of the learned token's (toy_ti; reconstruct.py says why)
    lambda_prior: float = TOY_PRIOR_WEIGHT
    ti_steps: int = 500
    ti_initializer: str = "dog"  # an unrelated word: the token has to be learned from the image
    ti_templates: str = "object"  # textual inversion's captions (TokenSettings.templates)
    lambda_mask: float = TOY_LAMBDA_MASK  # of every run with this prior, prior-free included (reconstruct.py says why)
    zero123: Zero123Run | None = None  # a toy Zero-1-to-3 of the same world (modes zero123 and joint)

    @classmethod
    def load(cls, model: Path, zero123: Zero123Run | None = None, **settings) -> "TrainedPrior":
        """Read the words from the prior's objects.json; a Zero-1-to-3 must know the same world (its held-out
        instances are the suite's scenes, so it must never have seen them either)."""
        words, held_out = load_world(Path(model))
        if zero123 is not None and load_world(zero123.model) != (words, held_out):
            raise UserError(f"--toy_zero123 {zero123.model} was trained on another world than --toy_prior {model} "
                            "(their objects.json differ); train it with --prior pointing at that prior.")
        return cls(Path(model), words, held_out, zero123=zero123, **settings)

    def scenes(self, families: Sequence[str], instances: int) -> list[tuple[str, int]]:
        """The first `instances` held-out instances of each family (a prior without held-out instances: its own
        training instances, as earlier priors were evaluated)."""
        pool = self.held_out or self.words
        chosen = []
        for family in families:
            seeds = [int(key.partition(":")[2]) for key in pool if key.partition(":")[0] == family][:instances]
            if not seeds:
                raise UserError(f"the prior {self.model} has no instance of {family}; choose --scenes among "
                                f"{', '.join(sorted({key.partition(':')[0] for key in pool}))}.")
            chosen += [(family, seed) for seed in seeds]
        return chosen

    def token_stage(self, task: SuiteTask) -> pipeline.Stage:
        """The pipeline's textual-inversion stage on the scene's input view, from an unrelated word; one token per
        scene (seed 0), shared by the scene's runs at every seed."""
        settings = pipeline.TokenSettings(str(self.model), steps=self.ti_steps, seed=0, templates=self.ti_templates,
                                          mixed_precision="fp16" if task.device.startswith("cuda") else "no")
        return pipeline.learn_token(task.scene_dir / "rgba.png", self.ti_initializer, token_folder(task), settings)

    def run(self, task: SuiteTask, scene_key: str) -> PriorRun:
        if task.mode in ZERO123_MODES and self.zero123 is None:
            raise UserError(f"mode {task.mode} needs a toy Zero-1-to-3 (--toy_zero123).")
        if task.mode == "zero123":
            return PriorRun(None, zero123=self.zero123)
        if task.mode in ("toy", "joint"):
            word = {**self.words, **self.held_out}.get(scene_key)
            if word is None:
                raise UserError(f"the prior {self.model} does not know the scene {scene_key}; it knows "
                                f"{', '.join([*self.words, *self.held_out])}.")
            return PriorRun(self.model, self.guidance_scale, word=word, lambda_prior=self.lambda_prior,
                            zero123=self.zero123 if task.mode == "joint" else None)
        embeds = pipeline.ensure(self.token_stage(task))
        return PriorRun(self.model, self.ti_guidance_scale, learned_embeds=embeds, lambda_prior=self.lambda_prior)


def token_folder(task: SuiteTask) -> Path:
    """runs/SCENE/token: the scene's learned token, beside its runs."""
    return task.workspace.parent / "token"


def learn_scene_token(task: SuiteTask) -> Path:
    """The learned token of a toy_ti task's scene (a task of its own, so that the pool learns every scene's token
    once, in parallel, before the runs that share it start)."""
    assert task.prior is not None
    return pipeline.ensure(task.prior.token_stage(task))


def task_args(task: SuiteTask) -> tuple[str, ...]:
    """The task's main.py flags beyond its size and mode: with a trained prior, the objective of all its runs, then
    the user's --main_args (which come later, so they win)."""
    objective = ("--lambda_mask", str(task.prior.lambda_mask)) if task.prior is not None else ()
    return (*objective, *task.extra_args)


MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".txt")  # weights, configs, tokenizer files


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that decide what it computes (not its card or a hidden training cache)."""
    return sorted(path for path in Path(folder).rglob("*")
                  if path.is_file() and path.suffix in MODEL_FILE_SUFFIXES
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def finished_run(scene_dir: Path, workspace: Path, args: Sequence[str], iters: int,
                 prior: PriorRun | None) -> pipeline.Stage:
    """A suite run as the pipeline's NeRF stage: complete when its checkpoint holds every iteration and its record
    says it was trained with these arguments from these files (the input view, the learned token, the priors'
    weights). A suite run again in its folder evaluates such runs instead of training them again, so an interrupted
    suite, or one given more modes, seeds or instances, trains only what is missing."""
    inputs = [scene_dir / "rgba.png"]
    if prior is not None:
        inputs += [prior.learned_embeds] if prior.learned_embeds is not None else []
        inputs += [file for model in (prior.model, prior.zero123.model if prior.zero123 else None)
                   if model is not None for file in model_files(Path(model))]
    return pipeline.Stage("nerf", pipeline.script("main.py"), tuple(args), workspace / "checkpoints" / LATEST,
                          min_steps=iters, inputs=tuple(inputs))


def run_task(task: SuiteTask) -> dict:
    device, spec = torch.device(task.device), SUITE_SIZES[task.size]
    start = time.time()
    scene_key = task.scene.replace("-", ":")
    prior = task.prior.run(task, scene_key) if task.mode in PRIOR_MODES and task.prior is not None else None
    args = reconstruction_args(task.scene_dir, task.workspace, task.mode, spec.train, task.seed, task.oracle_strength,
                               task_args(task), cuda=device.type == "cuda", prior=prior)
    opt = parse(args)
    stage = finished_run(task.scene_dir, task.workspace, args, opt.train.iters, prior)
    reused = not task.retrain and stage.record.is_file() and stage.complete()  # no record: trained by an older suite
    if reused:
        log.info("%s %s seed %d: %s holds this run, finished; evaluating it (--retrain trains it again)",
                 task.scene, task.mode, task.seed, task.workspace)
    else:
        train(task.scene_dir, opt, device)
        stage.write_record()
    seconds = time.time() - start
    report = evaluate_workspace(task.workspace, task.scene_dir / "mesh.ply", task.scene_dir / "views",
                                settings=spec.evaluation, device=device)
    log.info("%s %s: F@2%% %s in %.0f s", task.scene, task.mode, lookup(report, ("geometry", "fscore", "2%")), seconds)
    row = {"scene": task.scene, "mode": task.mode, "seed": task.seed, "report": report,
           "train_seconds": None if reused else seconds}
    return {**row, "reused": True} if reused else row


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Processes started inside the block show no tqdm bars (they would interleave); tqdm reads TQDM_DISABLE when
    it is imported, which in a worker happens before any initializer runs, so it is inherited from here."""
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = before


def _quiet_worker() -> None:
    """Worker processes: a log line per finished run instead of the trainer's messages, one CPU thread, also for
    the stages a worker starts (textual inversion): with several jobs per core, threads that wait on each other at
    every operation made a 500-step token take 20 minutes instead of 2 (two jobs on the 2-core CPU)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("realfusion").setLevel(logging.WARNING)  # the trainers would all talk at once
    log.setLevel(logging.INFO)
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the stages' own torch at its start


def run_suite(work_dir: str | Path, size: str = "reduced", device: torch.device | None = None,
              families: Sequence[str] = FAMILIES, seeds: Sequence[int] = (0,),
              oracle_strength: float = DEFAULT_STRENGTH, jobs: int = 1, prior: TrainedPrior | None = None,
              modes: Sequence[str] = MODES, extra_args: Sequence[str] = (), instances: int = 2,
              retrain: bool = False) -> dict:
    """Make every scene, train every mode on it at every seed, evaluate; returns {settings, rows, table, summary}.

    The scenes: without a prior, each family's instance of the first seed; with a trained `prior`, the first
    `instances` of its held-out instances per family. `modes`: prior_free and oracle, and with a prior also toy
    (the class word) and toy_ti (a token learned from the input view, starting from an unrelated word), and with
    the prior's Zero-1-to-3 zero123 (it alone) and joint (it and the class word).

    With jobs > 1 the runs go to that many worker processes. A reconstruction is bound by kernel launches and
    Python, not by the GPU's arithmetic, so several share one GPU well (on a CPU, give one job per core).
    A run that the folder already holds, finished with the same arguments and inputs, is evaluated, not trained
    again, unless `retrain` (`finished_run`).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with workspace_lock.held(work_dir, flag="--work_dir"):  # one suite per folder: its runs share the scenes
        return _run_suite(work_dir, size, device, families, seeds, oracle_strength, jobs, prior, modes, extra_args,
                          instances, retrain)


def _run_suite(work_dir: Path, size: str, device: torch.device | None, families: Sequence[str],
               seeds: Sequence[int], oracle_strength: float, jobs: int, prior: TrainedPrior | None,
               modes: Sequence[str], extra_args: Sequence[str], instances: int, retrain: bool) -> dict:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = SUITE_SIZES[size]
    conventions = Conventions.from_options(Options())
    scenes = prior.scenes(families, instances) if prior is not None else [(f, seeds[0]) for f in families]
    tasks = []
    for family, scene_seed in scenes:
        name = f"{family}-{scene_seed}"
        scene_dir = write_scene(make_scene(family, scene_seed), work_dir / "scenes" / name, conventions,
                                spec.input_size, spec.view_size, spec.views, spec.gt_mesh_resolution)
        tasks += [SuiteTask(name, scene_dir, work_dir / "runs" / name / run_name(mode, seed, seeds), mode, size,
                            str(device), seed, oracle_strength, prior, tuple(extra_args), retrain)
                  for seed in seeds for mode in modes]
    token_tasks = list({token_folder(t): t for t in tasks if t.mode == "toy_ti"}.values())
    finished = work_dir / "rows.jsonl"  # each run's row as it ends: an interrupted suite keeps the finished runs
    set_aside(finished)

    def keep(row: dict) -> dict:
        with finished.open("a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")
        return row

    if jobs > 1:
        if device.type == "cuda":
            build_renderer(Options(), device)  # compile the CUDA extensions once, before the workers load them
        context = multiprocessing.get_context("spawn")
        with _no_progress_bars(), ProcessPoolExecutor(jobs, mp_context=context, initializer=_quiet_worker) as pool:
            for done in as_completed([pool.submit(learn_scene_token, task) for task in token_tasks]):
                done.result()
            futures = [pool.submit(run_task, task) for task in tasks]
            for future in as_completed(futures):
                keep(future.result())
            rows = [future.result() for future in futures]
    else:
        rows = [keep(run_task(task)) for task in tasks]  # a toy_ti run learns its scene's token first
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    settings = {"size": size, "device": str(device), "card": card, "seeds": list(seeds),
                "scenes": [f"{family}:{seed}" for family, seed in scenes], "oracle_strength": oracle_strength,
                "jobs": jobs, "torch": torch.__version__, "modes": list(modes),
                "main_args": list(extra_args), "retrain": retrain}
    if prior is not None:
        settings["prior"] = {"model": str(prior.model), "guidance_scale": prior.guidance_scale,
                             "ti_guidance_scale": prior.ti_guidance_scale,
                             "lambda_prior": prior.lambda_prior, "lambda_mask": prior.lambda_mask,
                             "ti_steps": prior.ti_steps, "ti_initializer": prior.ti_initializer,
                             "ti_templates": prior.ti_templates}
        if prior.zero123 is not None:
            settings["prior"]["zero123"] = {"model": str(prior.zero123.model),
                                            "guidance_scale": prior.zero123.guidance_scale,
                                            "lambda_prior_zero123": prior.zero123.lambda_prior}
    return {"settings": settings, "rows": rows, "table": suite_table(rows), "summary": summary_table(rows)}


def set_aside(rows_file: Path) -> Path | None:
    """Move an earlier suite's rows out of the way (rows-YYYYmmdd-HHMMSS[-N].jsonl beside it) instead of losing them:
    a suite run again in its folder starts its rows afresh, and an interrupted one's finished runs stay readable."""
    if not rows_file.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(rows_file.stat().st_mtime))
    target, n = rows_file.with_name(f"rows-{stamp}.jsonl"), 1
    while target.exists():
        target, n = rows_file.with_name(f"rows-{stamp}-{n}.jsonl"), n + 1
    rows_file.rename(target)
    log.info("the earlier suite's rows are now %s", target)
    return target


def run_name(mode: str, seed: int, seeds: Sequence[int]) -> str:
    """A run's folder under runs/SCENE: the mode, with the seed when the suite runs several."""
    return mode if len(seeds) == 1 else f"{mode}-seed{seed}"


def suite_table(rows: Sequence[dict]) -> str:
    header = ["scene", "mode", "seed", *(name for name, _ in SUITE_COLUMNS), "train s"]
    body = [[row["scene"], row["mode"], row.get("seed", "-"),
             *(lookup(row["report"], path) for _, path in SUITE_COLUMNS),
             "reused" if row.get("reused") else f"{row['train_seconds']:.0f}"]
            for row in rows]
    return format_table(header, body)


def summary_table(rows: Sequence[dict]) -> str:
    """Means over a family's scenes and seeds, per mode: the numbers the suite's targets are stated in."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scene"].rpartition("-")[0], row["mode"]), []).append(row["report"])
    body = []
    for (family, mode), reports in sorted(groups.items()):
        means = []
        for _, path in SUITE_COLUMNS:
            values = [v for v in (lookup(r, path) for r in reports) if v is not None]
            means.append(sum(values) / len(values) if values else None)
        body.append([family, mode, len(reports), *means])
    return format_table(["family", "mode", "runs", *(name for name, _ in SUITE_COLUMNS)], body)
