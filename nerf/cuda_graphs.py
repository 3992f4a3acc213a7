"""Replaying the frozen diffusion networks of score distillation as CUDA graphs.

SDS calls the UNet (no gradient) and the VAE encoder (forward and backward to the image) with the same
shapes at every iteration. Eager PyTorch spends most of that time launching thousands of small kernels
from Python; a CUDA graph records the kernels once and replays them with a single launch, which makes
the same arithmetic several times faster (see the README's Performance section). The maths is
unchanged: the captured kernels are exactly the eager ones.

Graphs need fixed shapes and fixed memory: inputs are copied into buffers owned by the graph, and the outputs
(and the input's gradient from a replayed backward) are buffers that the next replay overwrites, so callers
consume them before calling again. A call with other shapes than the captured ones runs eagerly. When capturing
fails (an op that cannot be captured, too little memory) the wrapper warns once and runs eagerly from then on.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

from nerf.errors import reason

log = logging.getLogger("realfusion")
WARMUP_CALLS = 3  # eager calls on a side stream before capture: lets cuDNN/cuBLAS pick and cache kernels


def _shapes(tensors: tuple[Tensor, ...]) -> tuple:
    return tuple((t.shape, t.dtype, t.requires_grad) for t in tensors)


class _Replayable:
    """Common part of the two wrappers: the eager function, the captured signature, the fallback."""

    def __init__(self, fn: Callable[..., Tensor], name: str) -> None:
        self.fn = fn
        self.name = name
        self.signature: tuple | None = None
        self.failed = False

    def _usable(self, inputs: tuple[Tensor, ...]) -> bool:
        return not self.failed and all(t.is_cuda for t in inputs) and not torch.cuda.is_current_stream_capturing()

    def _give_up(self, exc: Exception, stream: torch.cuda.Stream) -> None:
        self.failed = True
        recover_from_failed_capture(stream)
        log.warning("CUDA graph capture of the %s failed (%s: %s); running it eagerly (slower). "
                    "--no_cuda_graph skips the attempt.", self.name, type(exc).__name__, reason(exc))


def recover_from_failed_capture(stream: torch.cuda.Stream | None) -> None:
    """Leave the process as it was before a capture that failed, so the eager fallback (and everything after it) runs.

    A capture that a CUDA call inside it invalidated ends with an error: `torch.cuda.graph` then leaves its capture
    stream current, and (torch before 2.13) the default CUDA generator in capture mode, so the next random draw
    outside a capture raises "Offset increment outside graph capture". `stream` (the caller's) is made current again
    and the generator is given a fresh state carrying on from the same seed and offset; None: nothing ran on CUDA."""
    if stream is None:
        return
    torch.cuda.set_stream(stream)
    generator = torch.cuda.default_generators[torch.cuda.current_device()]
    try:
        torch.empty(1, device="cuda").normal_()
    except RuntimeError:
        fresh = torch.Generator(device="cuda")
        fresh.manual_seed(generator.initial_seed())
        fresh.set_offset(generator.get_offset())
        generator.graphsafe_set_state(fresh)
        log.info("reset the CUDA random generator left in capture mode by the failed capture")


class GraphedInference(_Replayable):
    """A no-grad function of fixed-shape CUDA tensors, captured at its first call and replayed after."""

    def __init__(self, fn: Callable[..., Tensor], name: str) -> None:
        super().__init__(fn, name)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: tuple[Tensor, ...] = ()
        self.static_output: Tensor | None = None

    @torch.no_grad()
    def __call__(self, *inputs: Tensor) -> Tensor:
        if not self._usable(inputs):
            return self.fn(*inputs)
        if self.graph is None:
            stream = torch.cuda.current_stream()
            try:
                self._capture(inputs)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                self.graph, self.static_output = None, None
                self._give_up(exc, stream)
                return self.fn(*inputs)
        if _shapes(inputs) != self.signature:
            return self.fn(*inputs)
        for buffer, value in zip(self.static_inputs, inputs):
            buffer.copy_(value)
        self.graph.replay()
        return self.static_output

    def _capture(self, inputs: tuple[Tensor, ...]) -> None:
        self.static_inputs = tuple(t.detach().clone() for t in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_output = self.fn(*self.static_inputs)
        self.graph, self.signature = graph, _shapes(inputs)
        log.info("captured the %s as a CUDA graph", self.name)


class GraphedDifferentiable(_Replayable):
    """A differentiable function of one fixed-shape CUDA tensor (frozen weights), forward and backward
    captured together by ``torch.cuda.make_graphed_callables``; gradients flow to the input only."""

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str) -> None:
        super().__init__(fn, name)
        self.graphed: Callable[[Tensor], Tensor] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        if not self._usable((x,)) or not x.requires_grad or not torch.is_grad_enabled():
            return self.fn(x)
        if self.graphed is None:
            stream = torch.cuda.current_stream()
            try:
                sample = x.detach().clone().requires_grad_(True)
                with torch.autocast("cuda", enabled=False):
                    self.graphed = torch.cuda.make_graphed_callables(self.fn, (sample,), num_warmup_iters=WARMUP_CALLS)
                self.signature = _shapes((x,))
                log.info("captured the %s (forward and backward) as CUDA graphs", self.name)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                self._give_up(exc, stream)
                return self.fn(x)
        if _shapes((x,)) != self.signature:
            return self.fn(x)
        return self.graphed(x)
