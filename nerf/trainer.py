"""The reconstruction loop: one objective evaluation and one optimiser step per iteration, with mixed precision,
divergence handling, the weight average, logging and checkpoints.

100 iterations make an epoch; the averaged weights (EMA) are updated once per epoch; every ``eval_interval``
epochs the run validates and writes a checkpoint (also at the end).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from nerf import outputs
from nerf.checkpoint import LATEST, save_checkpoint
from nerf.data import RealView
from nerf.errors import UserError, reason
from nerf.objective import Objective
from nerf.optim import EMA, lr_lambda, make_optimizer
from nerf.options import ITERS_PER_EPOCH, TrainOptions
from nerf.options_file import save_record
from nerf.renderer import Renderer
from nerf.run_log import RunLog

log = logging.getLogger("realfusion")
LOG_EVERY = 10


class TrainingDiverged(UserError):
    """Too many consecutive non-finite losses: the run stops before writing a poisoned checkpoint (a one-line
    error, exit status 2, like every other failure the user can act on)."""


class Trainer:
    """Owns the optimisation state (optimiser, scheduler, loss scaler, EMA, generator, step) and the loop."""

    def __init__(self, train: TrainOptions, *, renderer: Renderer, objective: Objective, frames: outputs.Frames,
                 real_view: RealView, workspace: Path, generator: torch.Generator, orbit_size: int,
                 update_grid_every: int, grid_levels_mask_iters: int, record: dict,
                 training_render_every: int = 100, log_to_wandb: bool = False, empty_grid_start: bool = False,
                 live_weights_outputs: bool = False) -> None:
        """`orbit_size`: side of the validation orbit's views; `record`: the resolved options, saved in every
        checkpoint (and logged with `log_to_wandb`); the last two flags are legacy behaviours."""
        self.options = train
        self.renderer = renderer
        self.field = renderer.field
        self.objective = objective
        self.frames = frames
        self.real_view = real_view
        self.workspace = workspace
        self.generator = generator
        self.orbit_size = orbit_size
        self.device = renderer.density_grid.device
        self.update_grid_every = update_grid_every
        self.grid_levels_mask_iters = grid_levels_mask_iters
        self.record = record
        self.training_render_every = training_render_every
        self.empty_grid_start = empty_grid_start
        self.live_weights_outputs = live_weights_outputs
        if objective.is_empty:
            raise UserError("nothing to optimise: both the prior (--lambda_prior, a prompt) and the input-view "
                            "losses (--lambda_image, --lambda_mask) are off.")
        self.fp16 = train.fp16 and self.device.type == "cuda"
        self.optimizer = make_optimizer(train.optim, self.field.param_groups(train.lr), train.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(bool(train.lr_warmup), train.warm_iters, train.iters, train.lr, train.min_lr))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.fp16)
        self.ema = EMA(self.field.parameters(), train.ema_decay)
        self.global_step = 0
        self.bad_steps = 0
        self.skipped_steps = 0
        self._bad_run = torch.zeros((), dtype=torch.long, device=self.device)  # device-side counters, read by
        self._skipped = torch.zeros((), dtype=torch.long, device=self.device)  # check_divergence
        self.log = RunLog(workspace, wandb_config=record if log_to_wandb else None)

    @property
    def epoch(self) -> int:
        return self.global_step // ITERS_PER_EPOCH

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.fp16:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    # --- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict:
        cuda_rng = torch.cuda.get_rng_state() if self.device.type == "cuda" else torch.zeros(0, dtype=torch.uint8)
        return {
            "global_step": self.global_step,
            "model": self.renderer.state_dict(),
            "grid_levels_mask": self.field.grid_levels_mask,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(), "cuda": cuda_rng},
            "skipped_steps": self.skipped_steps,
            "options": self.record,
        }

    def save(self) -> Path:
        self.check_divergence()
        self.check_finite_state()
        path = save_checkpoint(self.workspace / "checkpoints" / LATEST, self.state_dict())
        save_record(self.record, self.workspace / "options.json")  # the record always matches the checkpoint
        log.info("saved checkpoint %s at step %d", path, self.global_step)
        return path

    def load_model(self, state: dict, source: Path) -> None:
        """Weights, occupancy grid and averaged weights of a checkpoint that `nerf.build` located and read."""
        try:
            self.renderer.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        except (KeyError, RuntimeError, ValueError) as exc:
            differing = model_options_differing(state.get("options"), self.record)
            why = (f"it was trained with {', '.join(differing)}" if differing
                   else reason(exc).rstrip(":"))
            raise UserError(f"checkpoint {source} does not match this model ({why}); use the options it was trained "
                            "with or --ckpt scratch.") from None
        self.field.grid_levels_mask = int(state["grid_levels_mask"])

    def load(self, state: dict, source: Path, model_only: bool = False) -> None:
        """Model and (unless `model_only`) the whole optimisation state, so that training resumes exactly."""
        self.load_model(state, source)
        if model_only:
            log.info("loaded weights from %s (model only)", source)
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
        log.info("resumed from %s at step %d", source, self.global_step)

    # --- one iteration ----------------------------------------------------------------
    def _loss_scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0

    def _update_field_schedule(self, step: int) -> None:
        if step % self.update_grid_every == 0:
            with self.autocast():
                self.renderer.update_occupancy()
        if self.field.grid_levels_mask > 0 and step > self.grid_levels_mask_iters:
            log.info("step %d: all grid levels enabled", step)
            self.field.grid_levels_mask = 0

    def train_step(self) -> dict[str, Tensor]:
        """One iteration; returns the detached loss terms (non-finite iterations are skipped, not applied)."""
        self.global_step += 1
        step = self.global_step
        self._update_field_schedule(step)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            result = self.objective(step, self._loss_scale)
        loss = result.loss
        if result.synthetic is not None and self.training_render_every and step % self.training_render_every == 0:
            outputs.save_training_render(self.frames, result.synthetic.out, result.synthetic.camera.height,
                                         self.workspace / "training_images" / f"step_{step:05d}.png")
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
        return {"loss": loss.detach(), **{k: v.detach() for k, v in result.terms.items()}}

    def check_divergence(self) -> None:
        """Read the device-side counts of non-finite iterations; stop after --max_bad_steps in a row.

        Runs every iteration without a loss scaler and every LOG_EVERY iterations with one (a host read per
        iteration would stall the GPU queue), and always before a checkpoint is written.
        """
        skipped, in_a_row = torch.stack([self._skipped, self._bad_run]).tolist()  # one wait for the GPU, not two
        if skipped > self.skipped_steps:
            log.warning("step %d: %d non-finite iteration(s) skipped so far (%d in a row)",
                        self.global_step, skipped, in_a_row)
        self.skipped_steps, self.bad_steps = skipped, in_a_row
        if in_a_row >= self.options.max_bad_steps:
            raise TrainingDiverged(
                f"{in_a_row} consecutive non-finite losses at step {self.global_step}; stopped without saving. "
                "Lower --lr, or try without --fp16/--O, or resume from the last checkpoint.")

    def check_finite_state(self) -> None:
        """Stop before a checkpoint holds non-finite weights or occupancy (a too large --lr can get there with
        finite losses); the last good checkpoint stays."""
        tensors = [*self.renderer.parameters(), self.renderer.density_grid]
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
        if not bool(finite):
            raise TrainingDiverged(
                f"the weights or the occupancy grid became non-finite by step {self.global_step}; stopped without "
                "saving. Lower --lr, or resume from the last checkpoint.")

    # --- the loop ----------------------------------------------------------------
    def _log(self, terms: dict[str, Tensor], progress: tqdm) -> None:
        # one device read for all terms (a float() each would wait for the GPU once per term)
        values = dict(zip(terms, torch.stack([v.float().reshape(()) for v in terms.values()]).tolist()))
        progress.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
        scalars = {f"train/{key}": value for key, value in values.items()}
        # --lr as the schedule sets it now; the grid tables' group runs at 10 times that (Field.param_groups)
        lr = {"train/lr": self.options.lr * self.scheduler.lr_lambdas[0](self.global_step),
              "train/lr_grid_tables": self.optimizer.param_groups[0]["lr"]}
        self.log.scalars({**scalars, **lr}, self.global_step)

    def validate(self) -> None:
        """Validation renders: the input view at its own size, the orbit at `orbit_size` (--HW_vis)."""
        image = outputs.save_validation(self.frames, self.real_view, self.ema, size=self.orbit_size,
                                        out_dir=self.workspace / "validation", epoch=self.epoch)
        self.log.image("validation/orbit", image, self.global_step)

    def train(self) -> None:
        iters, eval_interval = self.options.iters, self.options.eval_interval
        self.renderer.train()
        if self.global_step == 0 and not self.empty_grid_start:
            with torch.no_grad(), self.autocast():
                self.renderer.update_occupancy()
        # closed however the loop ends, so that a message after a Ctrl-C is not followed by the bar's last redraw
        with tqdm(total=iters, initial=self.global_step, desc="reconstruction", dynamic_ncols=True) as progress:
            while self.global_step < iters:
                terms = self.train_step()
                progress.update(1)
                if self.global_step % LOG_EVERY == 0 or self.global_step == iters:
                    self._log(terms, progress)
                if self.global_step % ITERS_PER_EPOCH == 0:
                    self.ema.update()
                    if self.epoch % eval_interval == 0:
                        self.validate()
                        self.save()
        if self.global_step % ITERS_PER_EPOCH or self.epoch % eval_interval:
            self.validate()
            self.save()
        self.log.flush()
        if self.skipped_steps:
            log.warning("%d iterations were skipped for non-finite losses", self.skipped_steps)

    def weights_for_outputs(self) -> contextlib.AbstractContextManager:
        """Renders after training use the averaged weights (the original's final video used live ones)."""
        return contextlib.nullcontext() if self.live_weights_outputs else self.ema.averaged()


# The options that shape the networks' parameters and the occupancy grid, by group.
MODEL_SHAPING = {"field": ("grid_type", "grid_levels", "grid_resolution", "log2_hashmap_size", "bg_radius",
                           "normal_type"),
                 "render": ("occupancy_grid_size", "bound")}


def model_options_differing(saved: dict | None, current: dict) -> list[str]:
    """`--name value (now other)` for each model-shaping option a checkpoint's record has another value of."""
    if not isinstance(saved, dict):
        return []
    found = []
    for group, names in MODEL_SHAPING.items():
        was, now = saved.get(group, {}), current.get(group, {})
        found += [f"--{name} {was[name]} (now {now[name]})" for name in names
                  if name in was and name in now and was[name] != now[name]]
    return found
