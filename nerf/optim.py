"""Optimisers, learning-rate schedule and the exponential moving average of the weights."""

from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator

import torch
from torch import nn


class Adan(torch.optim.Optimizer):
    """Adan (Xie et al., 2022): Adam-like moments plus a moment of gradient differences (Nesterov estimate).

    Defaults are the original run's: betas (0.98, 0.92, 0.99), eps 1e-8, decoupled weight decay 2e-5, and a
    global gradient-norm clip of 5.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 2e-5, max_grad_norm: float = 5.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - standard optimizer API
        loss = closure() if closure is not None else None
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        clip = 1.0
        if self.max_grad_norm > 0 and params:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            clip = torch.clamp(self.max_grad_norm / (norm + self.defaults["eps"]), max=1.0)
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad * clip
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_diff"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["prev_grad"] = grad.clone()
                state["step"] += 1
                step = state["step"]
                diff = grad - state["prev_grad"]
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_diff"].mul_(beta2).add_(diff, alpha=1 - beta2)
                nesterov = grad + beta2 * diff
                state["exp_avg_sq"].mul_(beta3).addcmul_(nesterov, nesterov, value=1 - beta3)
                bias1, bias2, bias3 = (1 - beta1**step), (1 - beta2**step), (1 - beta3**step)
                denom = (state["exp_avg_sq"] / bias3).sqrt_().add_(group["eps"])
                update = state["exp_avg"] / bias1 + beta2 * state["exp_avg_diff"] / bias2
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.addcdiv_(update, denom, value=-group["lr"])
                state["prev_grad"].copy_(grad)
        return loss


def make_optimizer(name: str, param_groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """`adam` is what the original actually ran for every choice but adan (Adam, betas (0.9, 0.99), eps 1e-15);
    `adamw` here really is AdamW; `adan` uses 5x the learning rate, as the original."""
    if name == "adan":
        for group in param_groups:
            group["lr"] *= 5
        return Adan(param_groups, lr=5 * lr)
    # On the GPU the fused kernels update every tensor in one launch and let the fp16 GradScaler skip a
    # non-finite step on the device instead of reading the inf flag back to the host.
    param_groups = [{**group, "params": list(group["params"])} for group in param_groups]  # may be generators
    fused = all(p.is_cuda for group in param_groups for p in group["params"])
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.99), eps=1e-15, fused=fused)
    return torch.optim.Adam(param_groups, lr=lr, betas=(0.9, 0.99), eps=1e-15, fused=fused)


def lr_lambda(warmup: bool, warm_iters: int, iters: int, lr: float, min_lr: float):
    """Constant factor 1, or linear warm-up then cosine decay floored at min_lr / lr."""

    def factor(step: int) -> float:
        if not warmup:
            return 1.0
        if step <= warm_iters:
            return step / max(warm_iters, 1)
        progress = (step - warm_iters) / max(iters - warm_iters, 1)
        return max(0.5 * (math.cos(math.pi * progress) + 1), min_lr / lr)

    return factor


class EMA:
    """Exponential moving average of parameters with the usual warm-up decay min(decay, (1 + n) / (10 + n))."""

    def __init__(self, params: Iterable[nn.Parameter], decay: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for avg, p in zip(self.shadow, self.params):
            avg.lerp_(p.detach(), 1 - decay)

    @contextlib.contextmanager
    @torch.no_grad()
    def averaged(self) -> Iterator[None]:
        """Swap the averaged weights in for the duration of the block."""
        live = [p.detach().clone() for p in self.params]
        self.copy_to_params()
        try:
            yield
        finally:
            for p, value in zip(self.params, live):
                p.copy_(value)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Put the averaged weights in place of the live ones."""
        for p, avg in zip(self.params, self.shadow):
            p.copy_(avg)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": [t.clone() for t in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state does not match the model's parameters")
        self.num_updates = int(state["num_updates"])
        for avg, saved in zip(self.shadow, state["shadow"]):
            avg.copy_(saved)
