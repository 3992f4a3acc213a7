"""One check for every prior's CUDA-graph (and compiled) path: the same SDS losses and image gradients as eager."""

from __future__ import annotations

from typing import Callable

import torch

SdsCall = Callable[[object, torch.Tensor, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def assert_replays_match_eager(eager: object, fast: object, call: SdsCall, images: torch.Tensor, t_key: str,
                               rtol: float = 1e-3) -> None:
    """`call(guidance, image, k)` runs SDS on image k (its own draws); the first call of `fast` captures, the later
    ones replay, each compared with `eager` on the same draws: same t, loss and image gradient within `rtol`."""

    def run(guidance: object, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        x = images[k].clone().requires_grad_()
        loss, stats = call(guidance, x, k)
        loss.backward()
        return loss.detach().clone(), x.grad.clone(), float(stats[t_key])  # graph outputs are replay buffers

    for k in range(len(images)):
        loss_e, grad_e, t_e = run(eager, k)
        loss_f, grad_f, t_f = run(fast, k)
        assert t_e == t_f
        torch.testing.assert_close(loss_f, loss_e, rtol=rtol, atol=1e-6)
        torch.testing.assert_close(grad_f, grad_e, rtol=rtol, atol=rtol * grad_e.abs().max().item())
