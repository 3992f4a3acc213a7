"""One optimisation step of textual inversion: the denoising loss of a step's micro-batches and the AdamW
update of the placeholder's vector.

The micro-batches of a step go through the networks as one batch (`fuse`), each sample keeping its own
random draws, so the gradient is the original's one-micro-batch-at-a-time accumulation up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from nerf.errors import UserError
from nerf.guidance.stable_diffusion import StableDiffusionParts
from nerf.textual_inversion.model import FrozenNetworks, Model

# Micro-batches of one optimisation step share a forward pass up to this many samples (more would
# need more memory than the original's one-micro-batch-at-a-time loop by a larger factor). At the
# README settings on an H100: 132 -> 76 ms per step, peak memory 4.1 -> 6.0 GiB.
FUSED_SAMPLES = 4
# What `train(on_phase=...)` reports, in the order the phases end within a step.
PHASES = ("data", "vae_encode", "text_encoder", "unet_forward", "backward", "optimizer", "logging")


def no_mark(phase: str) -> None:
    """The default phase hook of `train`: nothing."""


@dataclass
class Optimisation:
    """The optimiser side of a step, saved in and restored from checkpoints."""

    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    scaler: torch.amp.GradScaler
    noise_scheduler: Any  # the training noise schedule (DDPM) of the loss
    learning_rate: float  # after --scale_lr
    fused: bool  # the fused AdamW kernel (CUDA): a resumed optimiser must use this run's choice


@dataclass(frozen=True)
class OptimiserSettings:
    """AdamW and its learning-rate schedule, as the flags give them."""

    learning_rate: float
    scale_lr: bool  # multiply the learning rate by the samples per step
    batch_size: int
    accumulation: int  # micro-batches per optimisation step
    max_steps: int
    schedule: str = "constant"  # a diffusers schedule name
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8


def make_optimisation(settings: OptimiserSettings, model: Model, device: torch.device,
                      weight_dtype: torch.dtype) -> Optimisation:
    """AdamW on the vector with the diffusers LR schedule, the fp16 loss scaler and the DDPM noise schedule."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    accumulation = settings.accumulation
    learning_rate = settings.learning_rate * (accumulation * settings.batch_size if settings.scale_lr else 1)
    fused = device.type == "cuda"  # one kernel, and it takes the loss scaler's inf check without a host sync
    optimizer = torch.optim.AdamW([model.row.vector], lr=learning_rate, betas=settings.betas,
                                  weight_decay=settings.weight_decay, eps=settings.eps, fused=fused)
    try:
        lr_scheduler = get_scheduler(settings.schedule, optimizer, num_warmup_steps=settings.warmup_steps * accumulation,
                                     num_training_steps=settings.max_steps * accumulation)
    except ValueError as exc:
        raise UserError(f"--lr_scheduler {settings.schedule} is not a diffusers schedule; use constant, linear, "
                        f"cosine, cosine_with_restarts, polynomial or constant_with_warmup.") from exc
    scaler = torch.amp.GradScaler(device.type, enabled=weight_dtype == torch.float16)
    noise_scheduler = DDPMScheduler.from_config(model.parts.scheduler.config)
    if noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise UserError(f"the model predicts '{noise_scheduler.config.prediction_type}'; textual inversion supports "
                        f"epsilon and v_prediction.")
    return Optimisation(optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler,
                        noise_scheduler=noise_scheduler, learning_rate=learning_rate, fused=fused)


def optimisation_step(model: Model, opt: Optimisation, micro_batches: list[dict[str, torch.Tensor]], *,
                      accumulation: int, fuse_limit: int, on_phase: Callable[[str], None]) -> torch.Tensor:
    """One AdamW step on the accumulated loss of `micro_batches`; returns that loss, left on the device."""
    step_loss = torch.zeros((), device=model.parts.device)
    for group in fuse(micro_batches, fuse_limit):
        loss = denoising_loss(model.parts, model.nets, opt.noise_scheduler, group, accumulation, model.autocast,
                              on_phase)
        opt.scaler.scale(loss).backward()
        step_loss += loss.detach()
        on_phase("backward")
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.lr_scheduler.step()
    opt.optimizer.zero_grad(set_to_none=True)
    on_phase("optimizer")
    return step_loss


def fuse(micro_batches: list[dict[str, torch.Tensor]], limit: int) -> list[list[dict[str, torch.Tensor]]]:
    """Consecutive micro-batches grouped for one forward pass each, at most `limit` samples per group
    (a micro-batch larger than that forms a group of its own)."""
    groups: list[list[dict[str, torch.Tensor]]] = []
    size = limit
    for batch in micro_batches:
        n = len(batch["input_ids"])
        if groups and size + n <= limit:
            groups[-1].append(batch)
            size += n
        else:
            groups.append([batch])
            size = n
    return groups


def denoising_loss(parts: StableDiffusionParts, nets: FrozenNetworks, noise_scheduler: Any,
                   micro_batches: list[dict[str, torch.Tensor]], accumulation: int, autocast: Callable[[], Any],
                   mark: Callable[[str], None] = no_mark) -> torch.Tensor:
    """Sum over `micro_batches` of each one's denoising loss / `accumulation`, from one batched pass.

    Each micro-batch's loss is the original's: the mean squared error between the UNet's prediction
    and the noise (or velocity) over its samples. Its random draws -- VAE sample, noise, timesteps --
    are made micro-batch after micro-batch in the original's order and shapes, so each sample keeps
    its own (on CUDA, where the data's randomness lives on the CPU generator, the very numbers of the
    one-at-a-time loop). Every sample goes through the networks independently of the others in its
    batch, so the sum's gradient is the accumulated gradient of the original up to rounding.
    """
    device = parts.device
    pixels = torch.cat([b["pixel_values"].to(device, non_blocking=True) for b in micro_batches]).to(nets.dtype)
    ids = torch.cat([b["input_ids"].to(device, non_blocking=True) for b in micro_batches])
    mark("data")
    mean, std = (x.contiguous() for x in nets.encode(pixels))
    sizes = [len(b["input_ids"]) for b in micro_batches]
    latents, noise, t = [], [], []
    for part_mean, part_std in zip(mean.split(sizes), std.split(sizes)):
        # randn of an explicit shape: randn_like follows its argument's memory layout, which depends on
        # the convolution backend (channels-last on some CPU paths), and would place the numbers elsewhere
        shape, dtype = part_mean.shape, part_mean.dtype
        latents.append((part_mean + part_std * torch.randn(shape, device=device, dtype=dtype))
                       * parts.vae.config.scaling_factor)
        noise.append(torch.randn(shape, device=device, dtype=dtype))
        t.append(torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(part_mean),), device=device))
    latents, noise, t = torch.cat(latents), torch.cat(noise), torch.cat(t)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    mark("vae_encode")
    with autocast():
        states = parts.text_encoder(ids)[0].to(nets.dtype)
    mark("text_encoder")
    predicted = nets.denoise(noisy, t, states)
    epsilon = noise_scheduler.config.prediction_type == "epsilon"
    target = noise if epsilon else noise_scheduler.get_velocity(latents, noise, t)
    losses = [F.mse_loss(p.float(), q.float()) for p, q in zip(predicted.split(sizes), target.split(sizes))]
    loss = torch.stack(losses).sum() / accumulation
    mark("unet_forward")
    return loss
