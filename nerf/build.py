"""The one place a run is assembled from resolved options.

input view -> field + renderer -> prior (by name) -> objective -> trainer -> restored checkpoint. `main.py`, the
evaluation tools and the benchmarks all call :func:`build_run` (which writes nothing) or :func:`open_run` (the same
run with its workspace created, locked and logged into for a block); each component receives only its slice of
the options. Everything that can fail on bad input (the image, the checkpoint, the prior) is checked before the
workspace is written.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from nerf import workspace_lock
from nerf.anneal import AnnealedValue
from nerf.checkpoint import TRAINING_WAY_OUT, find_checkpoint, load_checkpoint
from nerf.data import RealView
from nerf.errors import UserError
from nerf.field import Background, DensityGeometry, RadianceField
from nerf.guidance import Guidance, prior_weights
from nerf.guidance.joint import JointGuidance
from nerf.objective import Objective
from nerf.options import Options
from nerf.options_file import to_dict
from nerf.outputs import Frames, Orbit
from nerf.renderer import Renderer
from nerf.run_log import require_wandb
from nerf.synthetic_views import SyntheticViews
from nerf.seeding import seed_everything
from nerf.trainer import Trainer
from nerf.workspace import default_workspace, open_workspace

log = logging.getLogger("realfusion")
DEBUG_RENDER_EVERY = 50
TRAINING_RENDER_EVERY = 100


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def kernel_backend(opt: Options) -> str:
    """auto: the CUDA extensions when they load, else the PyTorch reference; torch: always the reference."""
    return "auto" if opt.render.cuda_ray else "torch"


def build_renderer(opt: Options, device: torch.device) -> Renderer:
    """The field (geometry + shading + background) inside its renderer."""
    field_opt, render, backend = opt.field, opt.render, kernel_backend(opt)
    geometry = DensityGeometry(bound=render.bound, grid_levels=field_opt.grid_levels,
                               grid_resolution=field_opt.grid_resolution, grid_type=field_opt.grid_type,
                               log2_hashmap_size=field_opt.log2_hashmap_size, blob_density=field_opt.blob_density,
                               blob_radius=field_opt.blob_radius, grid_levels_mask=field_opt.grid_levels_mask,
                               normal_type=field_opt.normal_type, backend=backend)
    background = Background(backend=backend) if field_opt.bg_radius > 0 else None
    renderer = Renderer(RadianceField(geometry, background), bound=render.bound,
                        density_thresh=render.density_thresh, min_near=render.min_near, dt_gamma=render.dt_gamma,
                        max_steps=render.max_steps, grid_size=render.occupancy_grid_size, backend=backend,
                        ray_stream=render.ray_stream)
    return renderer.to(device)


def prior_enabled(opt: Options) -> bool:
    """The one decision whether a prior is loaded: training, with a weight of one of its terms ever above zero."""
    return not opt.inference and any(AnnealedValue(getattr(opt.objective, f"lambda_{weight}"), opt.train.iters)
                                     .ever_nonzero() for weight in prior_weights(opt.prior.guidance))


def build_prior(opt: Options, real_view: RealView, device: torch.device) -> Guidance | JointGuidance | None:
    """The prior, given the input view as loaded for the run; it runs on `device`."""
    if not prior_enabled(opt):
        embeds = opt.prior.learned_embeds_path  # unused now, but a wrong path is a mistake the user wants to hear of
        if embeds and not opt.inference and not Path(embeds).expanduser().exists():
            raise UserError(f"--learned_embeds_path {embeds} does not exist; give the file (or folder) textual "
                            f"inversion wrote, or leave it out.")
        return None
    from nerf.compilation import resolve
    from nerf.guidance import PriorContext, build_guidance

    context = PriorContext(real_view, device=device, fp16=opt.train.fp16, image_path=opt.data.image_path,
                           compile=resolve(opt.prior.compile, device, opt.train.iters))
    return build_guidance(opt.prior, context)


def load_real_view(opt: Options) -> RealView:
    data = opt.data
    return RealView.from_file(data.image_path, data.HW_real, data.pose_angle, data.orbit_radius, data.default_fovy,
                              left_handed=opt.uses("left_handed"), pad_to_square=data.pad_to_square)


def orbit(opt: Options) -> Orbit:
    data = opt.data
    return Orbit(pose_angle=data.pose_angle, radius=data.orbit_radius, fovy=data.default_fovy,
                 angle_overhead=data.angle_overhead, angle_front=data.angle_front,
                 left_handed=opt.uses("left_handed"))


def read_checkpoint(opt: Options, workspace: Path) -> tuple[Path, dict] | None:
    """The checkpoint --ckpt selects, located and read (and so validated) once; None to start from scratch."""
    if opt.inference and not (workspace / "checkpoints").is_dir() and not opt.ckpt.endswith((".pth", ".pt")):
        raise UserError(f"--test needs a trained workspace; {workspace} has no checkpoints (give --workspace).")
    if opt.inference and opt.ckpt == "scratch":
        raise UserError("--ckpt scratch with --test or --mesh_only would render an untrained model over the "
                        "workspace's outputs; drop --ckpt scratch (the latest checkpoint is used).")
    path = find_checkpoint(workspace, opt.ckpt)
    if path is None and opt.inference:
        raise UserError(f"{workspace} has no checkpoint to render (training stopped before its first save); "
                        f"train it first (main.py without --test).")
    if path is None:
        if opt.ckpt == "scratch" and (workspace / "checkpoints").is_dir():
            log.info("--ckpt scratch: starting a new run; the checkpoint in %s will be replaced at the first save",
                     workspace)
        return None
    way_out = ("pass another --ckpt, or train the workspace again (main.py without --test or --mesh_only)"
               if opt.inference else TRAINING_WAY_OUT)  # inference cannot start from scratch
    return path, load_checkpoint(path, way_out)


@dataclass
class Run:
    """Everything a run is made of, built once and passed on."""

    opt: Options
    workspace: Path
    device: torch.device
    real_view: RealView
    renderer: Renderer
    guidance: Guidance | JointGuidance | None
    frames: Frames
    trainer: Trainer


def build_trainer(opt: Options, *, renderer: Renderer, real_view: RealView, guidance: Guidance | JointGuidance | None,
                  frames: Frames, workspace: Path) -> Trainer:
    """Objective (with its view sampler) and the Trainer that optimises it; one seeded generator for both."""
    device = renderer.density_grid.device
    generator = torch.Generator().manual_seed(opt.seed)
    objective_opt = opt.objective
    views = SyntheticViews(opt.data, dir_text=opt.prior.dir_text,
                           replace_every=objective_opt.replace_synthetic_camera_every,
                           replace_noise=objective_opt.replace_synthetic_camera_noise,
                           albedo_iters=objective_opt.albedo_iters, real_camera=real_view.camera,
                           generator=generator, device=device, left_handed=opt.uses("left_handed"),
                           legacy_replacement=opt.uses("camera_replacement"))
    objective = Objective(objective_opt, iters=opt.train.iters, renderer=renderer, views=views, real_view=real_view,
                          guidance=guidance, num_rays=opt.data.num_rays, generator=generator,
                          legacy_anneal_4=opt.uses("anneal_4"), unscaled_prior=opt.uses("sds_unscaled"),
                          prior_weights=prior_weights(opt.prior.guidance))
    return Trainer(opt.train, renderer=renderer, objective=objective, frames=frames, real_view=real_view,
                   workspace=workspace, generator=generator, orbit_size=opt.output.HW_vis,
                   update_grid_every=opt.render.update_extra_interval,
                   grid_levels_mask_iters=opt.field.grid_levels_mask_iters, record=to_dict(opt),
                   training_render_every=DEBUG_RENDER_EVERY if opt.debug else TRAINING_RENDER_EVERY,
                   log_to_wandb=opt.output.wandb and not opt.inference,
                   empty_grid_start=opt.uses("empty_grid_start"),
                   live_weights_outputs=opt.uses("live_weights_final_video"))


def build_run(opt: Options, *, device: torch.device | None = None) -> Run:
    """Assemble and restore a run from every input, read and checked; nothing is written (see `open_run`)."""
    device = device or default_device()
    workspace = Path(opt.workspace) if opt.workspace else default_workspace(opt)
    if opt.output.wandb and not opt.inference:
        require_wandb()
    seed_everything(opt.seed)
    real_view = load_real_view(opt).to(device)
    checkpoint = read_checkpoint(opt, workspace)
    renderer = build_renderer(opt, device)
    guidance = build_prior(opt, real_view, device)
    frames = Frames(renderer, orbit(opt), opt.render.max_ray_batch, half=opt.train.fp16 and device.type == "cuda")
    trainer = build_trainer(opt, renderer=renderer, real_view=real_view, guidance=guidance, frames=frames,
                            workspace=workspace)
    if checkpoint is not None:
        path, state = checkpoint
        trainer.load(state, path, model_only=opt.ckpt == "latest_model")
    return Run(opt, workspace, device, real_view, renderer, guidance, frames, trainer)


@contextlib.contextmanager
def open_run(opt: Options, *, device: torch.device | None = None) -> Iterator[Run]:
    """The run of `build_run`, then its workspace created and held for the block (one run per workspace) and
    logged into; a refused run leaves the workspace as it was, and the lock goes however the block ends."""
    run = build_run(opt, device=device)
    run.workspace.mkdir(parents=True, exist_ok=True)
    with workspace_lock.held(run.workspace, opt.force_unlock):
        open_workspace(run.workspace)
        log.info("workspace: %s | device: %s | backends: grid encoder %s, ray marching %s", run.workspace,
                 run.device, run.renderer.field.encoder.backend_name, run.renderer.ops.name)
        yield run
