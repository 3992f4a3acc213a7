"""The synthetic benchmark: for every scene family, a prior-free and an oracle-guided reconstruction of its input
view, each scored on the input view, the validation path and the ground-truth mesh.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from nerf import pipeline, workspace_lock
from nerf.errors import UserError
from nerf.evaluation.evaluate import EvaluationSettings, evaluate_workspace
from nerf.guidance.oracle import DEFAULT_STRENGTH
from nerf.evaluation.reconstruct import (MODES, PRIOR_MODES, TOY_GUIDANCE_SCALE, TOY_PRIOR_WEIGHT, PriorRun,
                                         reconstruct)
from nerf.evaluation.report import format_table, lookup
from nerf.scenes.files import Conventions, write_scene
from nerf.scenes.procedural import FAMILIES, make_scene
from nerf.build import build_renderer
from nerf.options import Options

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
                 ("novel PSNR", ("novel_views", "psnr")), ("Chamfer-L1", ("geometry", "chamfer_l1")),
                 ("F@2%", ("geometry", "fscore", "2%")), ("volume IoU", ("geometry", "volume_iou")))


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


@dataclass(frozen=True)
class TrainedPrior:
    """A Stable-Diffusion-format prior that knows the suite's scenes (scripts/train-toy-prior.py): its folder,
    the word of each scene, and the settings of its runs."""

    model: Path
    words: dict[str, str]  # "family:seed" -> the object's word
    guidance_scale: float = TOY_GUIDANCE_SCALE
    lambda_prior: float = TOY_PRIOR_WEIGHT
    ti_steps: int = 500
    ti_initializer: str = "dog"  # an unrelated word: the token has to be learned from the image

    @classmethod
    def load(cls, model: Path, **settings) -> "TrainedPrior":
        """Read the words from the prior's objects.json."""
        try:
            words = json.loads((Path(model) / "objects.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{model} has no readable objects.json ({exc}); give a folder written by "
                            "scripts/train-toy-prior.py.") from None
        return cls(Path(model), words, **settings)

    def token_stage(self, task: SuiteTask) -> pipeline.Stage:
        """The pipeline's textual-inversion stage on the scene's input view, from an unrelated word."""
        settings = pipeline.TokenSettings(str(self.model), steps=self.ti_steps, seed=task.seed,
                                          mixed_precision="fp16" if task.device.startswith("cuda") else "no")
        return pipeline.learn_token(task.scene_dir / "rgba.png", self.ti_initializer, task.workspace.parent / "token",
                                    settings)

    def run(self, task: SuiteTask, scene_key: str) -> PriorRun:
        if task.mode == "toy":
            if scene_key not in self.words:
                raise UserError(f"the prior {self.model} does not know the scene {scene_key}; it knows "
                                f"{', '.join(self.words)}.")
            return PriorRun(self.model, self.guidance_scale, word=self.words[scene_key], lambda_prior=self.lambda_prior)
        embeds = pipeline.ensure(self.token_stage(task))
        return PriorRun(self.model, self.guidance_scale, learned_embeds=embeds, lambda_prior=self.lambda_prior)


def run_task(task: SuiteTask) -> dict:
    device, spec = torch.device(task.device), SUITE_SIZES[task.size]
    start = time.time()
    scene_key = task.scene.replace("-", ":")
    prior = task.prior.run(task, scene_key) if task.mode in PRIOR_MODES and task.prior is not None else None
    workspace = reconstruct(task.scene_dir, task.workspace, task.mode, spec.train, device, task.seed,
                            task.oracle_strength, extra_args=task.extra_args, prior=prior)
    seconds = time.time() - start
    report = evaluate_workspace(workspace, task.scene_dir / "mesh.ply", task.scene_dir / "views",
                                settings=spec.evaluation, device=device)
    log.info("%s %s: F@2%% %s in %.0f s", task.scene, task.mode, lookup(report, ("geometry", "fscore", "2%")), seconds)
    return {"scene": task.scene, "mode": task.mode, "train_seconds": seconds, "report": report}


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
    """Worker processes: a log line per finished run instead of the trainer's messages, one CPU thread."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("realfusion").setLevel(logging.WARNING)  # the trainers would all talk at once
    log.setLevel(logging.INFO)
    torch.set_num_threads(1)


def run_suite(work_dir: str | Path, size: str = "reduced", device: torch.device | None = None,
              families: Sequence[str] = FAMILIES, seed: int = 0, oracle_strength: float = DEFAULT_STRENGTH,
              jobs: int = 1, prior: TrainedPrior | None = None, modes: Sequence[str] = MODES,
              extra_args: Sequence[str] = ()) -> dict:
    """Make every scene, train every mode on it, evaluate; returns {settings, rows, table}.

    `modes`: prior_free and oracle, and with a trained `prior` also toy (its word for the scene) and toy_ti (a
    token learned from the input view, starting from an unrelated word).

    With jobs > 1 the runs go to that many worker processes. A reconstruction is bound by kernel launches and
    Python, not by the GPU's arithmetic, so several share one GPU well (on a CPU, give one job per core).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with workspace_lock.held(work_dir, flag="--work_dir"):  # one suite per folder: its runs share the scenes
        return _run_suite(work_dir, size, device, families, seed, oracle_strength, jobs, prior, modes, extra_args)


def _run_suite(work_dir: Path, size: str, device: torch.device | None, families: Sequence[str], seed: int,
               oracle_strength: float, jobs: int, prior: TrainedPrior | None, modes: Sequence[str],
               extra_args: Sequence[str]) -> dict:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = SUITE_SIZES[size]
    conventions = Conventions.from_options(Options())
    tasks = []
    for family in families:
        name = f"{family}-{seed}"
        scene_dir = write_scene(make_scene(family, seed), work_dir / "scenes" / name, conventions, spec.input_size,
                                spec.view_size, spec.views, spec.gt_mesh_resolution)
        tasks += [SuiteTask(name, scene_dir, work_dir / "runs" / name / mode, mode, size, str(device), seed,
                            oracle_strength, prior, tuple(extra_args)) for mode in modes]
    finished = work_dir / "rows.jsonl"  # each run's row as it ends: an interrupted suite keeps the finished runs
    finished.unlink(missing_ok=True)

    def keep(row: dict) -> dict:
        with finished.open("a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")
        return row

    if jobs > 1:
        if device.type == "cuda":
            build_renderer(Options(), device)  # compile the CUDA extensions once, before the workers load them
        context = multiprocessing.get_context("spawn")
        with _no_progress_bars(), ProcessPoolExecutor(jobs, mp_context=context, initializer=_quiet_worker) as pool:
            futures = [pool.submit(run_task, task) for task in tasks]
            for future in as_completed(futures):
                keep(future.result())
            rows = [future.result() for future in futures]
    else:
        rows = [keep(run_task(task)) for task in tasks]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    settings = {"size": size, "device": str(device), "card": card, "seed": seed, "oracle_strength": oracle_strength,
                "jobs": jobs, "torch": torch.__version__, "modes": list(modes),
                "main_args": list(extra_args)}
    if prior is not None:
        settings["prior"] = {"model": str(prior.model), "guidance_scale": prior.guidance_scale,
                             "lambda_prior": prior.lambda_prior,
                             "ti_steps": prior.ti_steps, "ti_initializer": prior.ti_initializer}
    return {"settings": settings, "rows": rows, "table": suite_table(rows)}


def suite_table(rows: Sequence[dict]) -> str:
    header = ["scene", "mode", *(name for name, _ in SUITE_COLUMNS), "train s"]
    body = [[row["scene"], row["mode"], *(lookup(row["report"], path) for _, path in SUITE_COLUMNS),
             f"{row['train_seconds']:.0f}"] for row in rows]
    return format_table(header, body)
