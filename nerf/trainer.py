"""The reconstruction loop: input-view losses, score distillation on random views, regularisers, outputs.

One iteration = one synthetic (prior) step on a random camera + one step on random pixels of the input view,
then a single optimiser step. 100 iterations make an epoch; the averaged weights (EMA) are updated once per
epoch; every ``eval_interval`` epochs the run validates and writes a checkpoint (also at the end).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from nerf import losses
from nerf.cameras import FRONT, CameraBatch, circle_cameras, random_cameras
from nerf.checkpoint import LATEST, find_checkpoint, load_checkpoint, save_checkpoint
from nerf.data import RealView
from nerf.errors import UserError
from nerf.optim import EMA, lr_lambda, make_optimizer
from nerf.options import ITERS_PER_EPOCH, AnnealedValue, Options, options_from_dict, to_dict
from nerf.renderer import Renderer, RenderSettings
from nerf.visualize import depth_to_image, grid, normals_to_image, save_png, save_video, to_uint8

log = logging.getLogger("realfusion")
TEST_FRAMES = 100
ORBIT_VIEWS = 8
LOG_EVERY = 10


class Guidance(Protocol):
    """What the Trainer needs from a prior: a loss on a rendered image [1, 3, H, W] seen by `camera`.

    `direction` is the camera's prompt bucket (cameras.DIRECTIONS); the statistics are tensors so that
    reading them (a host synchronisation) happens only at logging cadence.
    """

    def __call__(self, image: Tensor, direction: int, weight: float, *,
                 camera: CameraBatch) -> tuple[Tensor, dict[str, Tensor]]: ...


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses: the run stops before writing a poisoned checkpoint."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Weights:
    """The annealed loss weights of a run."""

    values: dict[str, AnnealedValue] = field(default_factory=dict)

    @classmethod
    def from_options(cls, opt: Options) -> "Weights":
        legacy = opt.uses("anneal_4")
        names = ("prior", "image", "mask", "entropy", "opacity", "orient", "smooth", "smooth_2d")
        return cls({n: AnnealedValue(getattr(opt, f"lambda_{n}"), opt.iters, legacy) for n in names})

    def __call__(self, name: str, step: int) -> float:
        return self.values[name].value(step)


class Trainer:
    def __init__(self, opt: Options, renderer: Renderer, real_view: RealView | None, guidance: Guidance | None,
                 workspace: Path, device: torch.device) -> None:
        self.opt = opt
        self.renderer = renderer.to(device)
        self.field = renderer.field
        self.real_view = real_view.to(device) if real_view is not None else None
        self.guidance = guidance
        self.workspace = workspace
        self.device = device
        self.weights = Weights.from_options(opt)
        self.use_prior = guidance is not None and self.weights.values["prior"].ever_nonzero()
        self.use_real = real_view is not None and (self.weights.values["image"].ever_nonzero()
                                                   or self.weights.values["mask"].ever_nonzero())
        if not (self.use_prior or self.use_real):
            raise UserError("nothing to optimise: both the prior (--lambda_prior, a prompt) and the input-view "
                            "losses (--lambda_image, --lambda_mask) are off.")
        self.fp16 = opt.fp16 and device.type == "cuda"
        self.optimizer = make_optimizer(opt.optim, self.field.param_groups(opt.lr), opt.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(bool(opt.lr_warmup), opt.warm_iters, opt.iters, opt.lr, opt.min_lr))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.fp16)
        self.ema = EMA(self.field.parameters(), opt.ema_decay)
        self.generator = torch.Generator().manual_seed(opt.seed)
        self.global_step = 0
        self.bad_steps = 0
        self.skipped_steps = 0
        self._bad_run = torch.zeros((), dtype=torch.long, device=device)  # device-side counters, read by
        self._skipped = torch.zeros((), dtype=torch.long, device=device)  # check_divergence
        self.writer = None
        for sub in ("checkpoints", "validation", "results"):
            (workspace / sub).mkdir(parents=True, exist_ok=True)

    # --- helpers ----------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.global_step // ITERS_PER_EPOCH

    def autocast(self):
        if self.fp16:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _tensorboard(self):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.workspace / "tensorboard"))
        return self.writer

    # --- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "global_step": self.global_step,
            "model": self.renderer.state_dict(),
            "grid_levels_mask": self.field.grid_levels_mask,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else torch.zeros(0, dtype=torch.uint8)},
            "skipped_steps": self.skipped_steps,
            "options": to_dict(self.opt),
        }

    def save(self) -> Path:
        self.check_divergence()
        path = save_checkpoint(self.workspace / "checkpoints" / LATEST, self.state_dict())
        log.info("saved checkpoint %s at step %d", path, self.global_step)
        return path

    def load(self, path: Path, model_only: bool = False) -> None:
        state = load_checkpoint(path)
        try:
            self.renderer.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"checkpoint {path} does not match this model ({str(exc).splitlines()[0]}); "
                            "use the options it was trained with or --ckpt scratch.") from None
        self.field.grid_levels_mask = int(state["grid_levels_mask"])
        saved = options_from_dict(state["options"])
        if saved.iters != self.opt.iters:
            log.info("resuming a run trained for --iters %d with --iters %d", saved.iters, self.opt.iters)
        if model_only:
            log.info("loaded weights from %s (model only)", path)
            return
        self.global_step = int(state["global_step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state["skipped_steps"])
        self._skipped.fill_(self.skipped_steps)
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        if self.device.type == "cuda" and state["rng"]["cuda"].numel():
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        log.info("resumed from %s at step %d", path, self.global_step)

    def restore(self) -> None:
        """Load the checkpoint that --ckpt selects (nothing for a fresh workspace or --ckpt scratch)."""
        path = find_checkpoint(self.workspace, self.opt.ckpt)
        if path is None:
            existing = self.workspace / "checkpoints" / LATEST
            if self.opt.ckpt == "scratch" and existing.is_file():
                log.info("--ckpt scratch: starting a new run; %s will be replaced at the first save", existing)
            return
        self.load(path, model_only=self.opt.ckpt == "latest_model")

    # --- one iteration ----------------------------------------------------------------
    def _synthetic_camera(self) -> tuple[CameraBatch, int, float]:
        """A random camera, or (every replace_synthetic_camera_every-th step) the input camera with the front
        prompt. Returns the camera, the prompt bucket and the std of the ray offsets to add."""
        opt, step = self.opt, self.global_step
        every = opt.replace_synthetic_camera_every
        camera = random_cameras(1, opt.HW_synthetic, opt.radius_range, opt.fovy_range, opt.uniform_sphere_rate,
                                opt.angle_overhead, opt.angle_front, opt.jitter_pose, opt.uses("left_handed"),
                                generator=self.generator).to(self.device)
        direction = int(camera.directions[0]) if opt.dir_text else 0
        if every > 0 and opt.uses("camera_replacement"):
            if step % every:
                return camera, FRONT if opt.dir_text else 0, opt.replace_synthetic_camera_noise
        elif every > 0 and step % every == 0 and self.real_view is not None:
            real = self.real_view.camera
            focal = real.focal * opt.HW_synthetic / real.height
            replaced = CameraBatch(real.poses, opt.HW_synthetic, focal, real.directions, real.theta, real.phi)
            return replaced, FRONT if opt.dir_text else 0, opt.replace_synthetic_camera_noise
        return camera, direction, 0.0

    def _shading(self) -> tuple[str, float]:
        if self.global_step < self.opt.albedo_iters:
            return "albedo", 1.0
        draw = float(torch.rand((), generator=self.generator))
        if draw > 0.8:
            return "albedo", 1.0
        return ("textureless", 0.1) if draw > 0.4 else ("lambertian", 0.1)

    def _offset(self, rays: Tensor, std: float) -> Tensor:
        return rays + torch.randn(3, device=rays.device) * std if std > 0 else rays

    def synthetic_step(self) -> tuple[Tensor, dict[str, Tensor]]:
        opt, step, w = self.opt, self.global_step, self.weights
        camera, direction, noise = self._synthetic_camera()
        rays_o, rays_d, _ = camera.rays()
        rays_o, rays_d = self._offset(rays_o, noise), self._offset(rays_d, noise)
        shading, ratio = self._shading()
        need_normals = shading != "albedo" or w("orient", step) > 0 or w("smooth_2d", step) > 0
        settings = RenderSettings(shading=shading, ratio=ratio, perturb=True, need_normals=need_normals,
                                  need_smooth=w("smooth", step) > 0)
        out = self.renderer.render(rays_o, rays_d, settings)
        size = camera.height
        pred = out["image"].reshape(1, size, size, 3).permute(0, 3, 1, 2).contiguous()
        ws = out["weights_sum"].reshape(1, 1, size, size)
        terms: dict[str, Tensor] = {}
        if self.guidance is not None and w("prior", step) > 0:
            loss_sds, _ = self.guidance(pred, direction, w("prior", step), camera=camera)
            if opt.uses("sds_unscaled") and self.fp16:
                loss_sds = loss_sds / self.scaler.get_scale()
            terms["sds"] = loss_sds
        if w("opacity", step) > 0:
            terms["opacity"] = w("opacity", step) * losses.opacity_loss(ws)
        if w("entropy", step) > 0:
            terms["entropy"] = w("entropy", step) * losses.entropy_loss(ws)
        if w("orient", step) > 0:
            terms["orient"] = w("orient", step) * out["loss_orient"]
        if w("smooth", step) > 0:
            terms["smooth"] = w("smooth", step) * out["loss_smooth"]
        if w("smooth_2d", step) > 0:
            normal_map = out["normal_image"].reshape(1, size, size, 3).permute(0, 3, 1, 2)
            terms["smooth_2d"] = w("smooth_2d", step) * losses.smooth_2d_loss(normal_map)
        if step % 100 == 0 or (opt.debug and step % 50 == 0):
            self._save_training_render(out, size, camera)
        return sum(terms.values(), torch.zeros((), device=self.device)), terms

    def real_step(self) -> tuple[Tensor, dict[str, Tensor]]:
        opt, step, w = self.opt, self.global_step, self.weights
        assert self.real_view is not None
        rays_o, rays_d, target = self.real_view.sample(opt.num_rays, self.generator)
        std = opt.noise_real_camera * ((1 - step / opt.iters) if opt.noise_real_camera_annealing else 1.0)
        rays_o, rays_d = self._offset(rays_o, std), self._offset(rays_d, std)
        out = self.renderer.render(rays_o, rays_d, RenderSettings(shading="albedo", ratio=1.0, perturb=True))
        gt_rgb, gt_alpha = target[..., :3], target[..., 3:]
        terms: dict[str, Tensor] = {}
        if w("image", step) > 0:
            terms["image"] = w("image", step) * losses.image_loss(out["image"], gt_rgb, gt_alpha)
        if w("mask", step) > 0:
            terms["mask"] = w("mask", step) * losses.mask_loss(out["weights_sum"], gt_alpha[..., 0])
        return sum(terms.values(), torch.zeros((), device=self.device)), terms

    def train_step(self) -> dict[str, Tensor]:
        """One iteration; returns the detached loss terms (non-finite iterations are skipped, not applied)."""
        opt = self.opt
        self.global_step += 1
        step = self.global_step
        if step % opt.update_extra_interval == 0:
            with self.autocast():
                self.renderer.update_occupancy()
        if self.field.grid_levels_mask > 0 and step > opt.grid_levels_mask_iters:
            log.info("step %d: all %d grid levels enabled", step, opt.grid_levels)
            self.field.grid_levels_mask = 0
        self.optimizer.zero_grad(set_to_none=True)
        terms: dict[str, Tensor] = {}
        loss = torch.zeros((), device=self.device)
        with self.autocast():
            if self.use_prior:
                loss_syn, syn_terms = self.synthetic_step()
                loss, terms = loss + loss_syn, {**terms, **syn_terms}
            if self.use_real and step >= opt.real_iters and step % opt.real_every == 0:
                loss_real, real_terms = self.real_step()
                loss, terms = loss + loss_real, {**terms, **real_terms}
        finite = torch.isfinite(loss)
        if self.scaler.is_enabled():
            # Decided on the device, without a host read: a non-finite loss makes every gradient NaN through the
            # gate, so the GradScaler skips the step (and lowers its scale, as it does for any overflow).
            if loss.requires_grad:
                gate = torch.where(finite, 1.0, float("nan"))
                self.scaler.scale(loss * gate).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
        elif bool(finite) and loss.requires_grad:
            loss.backward()
            self.optimizer.step()
        self._bad_run = torch.where(finite, torch.zeros_like(self._bad_run), self._bad_run + 1)
        self._skipped += (~finite).long()
        if not self.scaler.is_enabled() or step % LOG_EVERY == 0:
            self.check_divergence()
        self.scheduler.step()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}

    def check_divergence(self) -> None:
        """Read the device-side counts of non-finite iterations; stop after --max_bad_steps in a row.

        Runs every iteration without a loss scaler and every LOG_EVERY iterations with one (a host read per
        iteration would stall the GPU queue), and always before a checkpoint is written.
        """
        skipped, in_a_row = int(self._skipped), int(self._bad_run)
        if skipped > self.skipped_steps:
            log.warning("step %d: %d non-finite iteration(s) skipped so far (%d in a row)",
                        self.global_step, skipped, in_a_row)
        self.skipped_steps, self.bad_steps = skipped, in_a_row
        if in_a_row >= self.opt.max_bad_steps:
            raise TrainingDiverged(
                f"{in_a_row} consecutive non-finite losses at step {self.global_step}; stopped without saving. "
                "Lower --lr, or try without --fp16/--O, or resume from the last checkpoint.")

    # --- loops ----------------------------------------------------------------
    def train(self) -> None:
        opt = self.opt
        self.renderer.train()
        if self.global_step == 0 and not opt.uses("empty_grid_start"):
            with torch.no_grad(), self.autocast():
                self.renderer.update_occupancy()
        progress = tqdm(total=opt.iters, initial=self.global_step, desc="reconstruction", dynamic_ncols=True)
        while self.global_step < opt.iters:
            terms = self.train_step()
            progress.update(1)
            if self.global_step % LOG_EVERY == 0 or self.global_step == opt.iters:
                values = {k: float(v) for k, v in terms.items()}
                progress.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
                writer = self._tensorboard()
                for key, value in values.items():
                    writer.add_scalar(f"train/{key}", value, self.global_step)
                writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.global_step)
            if self.global_step % ITERS_PER_EPOCH == 0:
                self.ema.update()
                if self.epoch % opt.eval_interval == 0:
                    self.validate()
                    self.save()
        progress.close()
        if self.global_step % ITERS_PER_EPOCH or self.epoch % opt.eval_interval:
            self.validate()
            self.save()
        if self.skipped_steps:
            log.warning("%d iterations were skipped for non-finite losses", self.skipped_steps)

    def weights_for_outputs(self):
        """Renders after training use the averaged weights (the original's final video used live ones)."""
        if self.opt.uses("live_weights_final_video"):
            return contextlib.nullcontext()
        return self.ema.averaged()

    # --- validation and test renders ------------------------------------------------
    def _depth_range(self) -> tuple[float, float]:
        radius, extent = self.opt.orbit_radius, self.opt.bound * math.sqrt(3)
        return max(radius - extent, 0.0), radius + extent

    @torch.no_grad()
    def render_camera(self, camera: CameraBatch, index: int, settings: RenderSettings) -> dict[str, Tensor]:
        """Full-frame eval render of camera `index`; outputs reshaped to [H, W, ...]."""
        poses = camera.poses[index:index + 1]
        view = CameraBatch(poses, camera.height, camera.focal, camera.directions[index:index + 1],
                           camera.theta[index:index + 1], camera.phi[index:index + 1])
        rays_o, rays_d, _ = view.rays()
        size = camera.height
        with self.autocast():
            out = self.renderer.render(rays_o, rays_d, settings, max_ray_batch=self.opt.max_ray_batch)
        return {k: v.reshape(size, size, *v.shape[2:]).float() for k, v in out.items() if v.dim() >= 2}

    def _orbit(self, count: int, size: int) -> CameraBatch:
        opt = self.opt
        return circle_cameras(count, opt.pose_angle, opt.orbit_radius, opt.default_fovy, size,
                              left_handed=opt.uses("left_handed"), angle_overhead=opt.angle_overhead,
                              angle_front=opt.angle_front).to(self.device)

    @torch.no_grad()
    def validate(self) -> None:
        """Input view with live weights (6 panels) and 8 orbit views with averaged weights (rgb/opacity/depth)."""
        self.renderer.eval()
        near, far = self._depth_range()
        epoch = self.epoch
        out_dir = self.workspace / "validation"
        if self.real_view is not None:
            out = self.render_camera(self.real_view.camera, 0, RenderSettings())
            gt = self.real_view.rgba
            panels = [gt[..., :3], gt[..., 3:], gt[..., :3] * gt[..., 3:], out["image"], out["weights_sum"][..., None],
                      depth_to_image(out["depth"], out["weights_sum"], near, far)]
            save_png(out_dir / f"real_ep{epoch:04d}.png", grid([panels]))
        with self.ema.averaged():
            camera = self._orbit(ORBIT_VIEWS, self.opt.HW_real)
            renders = [self.render_camera(camera, k, RenderSettings()) for k in range(ORBIT_VIEWS)]
        rows = [[r["image"] for r in renders], [r["weights_sum"][..., None] for r in renders],
                [depth_to_image(r["depth"], r["weights_sum"], near, far) for r in renders]]
        image = grid(rows)
        save_png(out_dir / f"orbit_ep{epoch:04d}.png", image)
        self._tensorboard().add_image("validation/orbit", image.permute(2, 0, 1), self.global_step)
        self.renderer.train()

    def _save_training_render(self, out: dict[str, Tensor], size: int, camera: CameraBatch) -> None:
        near, far = self._depth_range()
        ws = out["weights_sum"].detach().reshape(size, size)
        panels = [out["image"].detach().reshape(size, size, 3),
                  depth_to_image(out["depth"].detach().reshape(size, size), ws, near, far)]
        if "normal_image" in out:
            panels.append(normals_to_image(out["normal_image"].detach().reshape(size, size, 3), ws))
        save_png(self.workspace / "training_images" / f"step_{self.global_step:05d}.png", grid([panels]))

    @torch.no_grad()
    def test(self, name: str | None = None) -> dict[str, Path]:
        """The 360-degree videos: rgb, opacity, depth, normals, textureless and a 2x3 grid with the input."""
        opt = self.opt
        name = name or opt.save_test_name
        self.renderer.eval()
        near, far = self._depth_range()
        camera = self._orbit(TEST_FRAMES, opt.HW_vis)
        streams: dict[str, list[np.ndarray]] = {k: [] for k in ("rgb", "opacity", "depth", "normals", "textureless", "grid")}
        gt = self._input_panel(opt.HW_vis)
        for k in tqdm(range(TEST_FRAMES), desc="test video", dynamic_ncols=True):
            light = camera.centers[k]
            plain = self.render_camera(camera, k, RenderSettings(light_d=light, need_normals=True))
            shaded = self.render_camera(camera, k, RenderSettings(shading="textureless", ratio=0.1, light_d=light))
            ws = plain["weights_sum"]
            frames = {"rgb": plain["image"], "opacity": ws[..., None],
                      "depth": depth_to_image(plain["depth"], ws, near, far),
                      "normals": normals_to_image(plain["normal_image"], ws), "textureless": shaded["image"]}
            frames["grid"] = grid([[gt, frames["rgb"], frames["opacity"]],
                                   [frames["depth"], frames["normals"], frames["textureless"]]])
            for key, frame in frames.items():
                streams[key].append(to_uint8(frame))
        paths = {key: save_video(self.workspace / "results" / f"{name}_{key}.mp4", frames)
                 for key, frames in streams.items()}
        log.info("wrote %d-frame videos to %s", TEST_FRAMES, self.workspace / "results")
        return paths

    def _input_panel(self, size: int) -> Tensor:
        if self.real_view is None:
            return torch.zeros(size, size, 3)
        rgba = self.real_view.rgba.permute(2, 0, 1)[None].float()
        rgba = torch.nn.functional.interpolate(rgba, size=(size, size), mode="bilinear", align_corners=False)[0]
        rgba = rgba.permute(1, 2, 0)
        return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])

    @torch.no_grad()
    def test_real_views(self) -> Path:
        """--test_on_real_data: the 8 orbit views at the input resolution, as PNG frames."""
        self.renderer.eval()
        camera = self._orbit(ORBIT_VIEWS, self.opt.HW_real)
        out_dir = self.workspace / "results" / f"{self.opt.save_test_name}_real"
        for k in range(ORBIT_VIEWS):
            save_png(out_dir / f"{k:03d}.png", self.render_camera(camera, k, RenderSettings())["image"])
        return out_dir
