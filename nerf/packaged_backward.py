"""A differentiable call of a frozen network, compiled ahead of time with its backward (the VAE encoder of score
distillation: forward to the latents, backward to the rendered image).

`torch.compile` of such a call traces the network with dynamo in every process and loads its hundreds of compiled
kernels as Python modules, seconds of a run's first iteration even when everything is cached. Here AOT autograd
splits the call once into a forward graph (the output and the tensors its backward needs) and a backward graph (the
input's gradient); each is compiled by AOTInductor into a package like `nerf.compilation.Packaged`'s, and later
processes load the two packages and join them in an autograd function, without tracing anything. The weights are
the graphs' inputs, passed at every call (the live module's tensors), so the packages hold no weights.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nerf.compilation import AheadOfTime, enable_persistent_caches, load_package
from nerf.fileio import write_atomic

log = logging.getLogger("realfusion")


class _Joined(torch.autograd.Function):
    """The forward package's output; its backward is the backward package on the tensors the forward saved (if that
    fails, the module's own backward from the saved input: the call after the failure runs eagerly)."""

    @staticmethod
    def forward(ctx: Any, packaged: PackagedDifferentiable, x: Tensor, *weights: Tensor) -> Tensor:
        output, *saved = packaged.forward_runner(x, *weights)
        ctx.packaged = packaged
        ctx.save_for_backward(*saved, x)
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        packaged: PackagedDifferentiable = ctx.packaged
        *saved, x = ctx.saved_tensors
        try:
            grad_x = packaged.backward_runner(*saved, grad.contiguous())[0]
        except Exception as exc:
            packaged.fail(exc)
            with torch.enable_grad():
                sample = x.detach().requires_grad_(True)
                grad_x = torch.autograd.grad(packaged.module(sample), sample, grad)[0]
        return (None, grad_x, *([None] * len(packaged.weight_names)))


class PackagedDifferentiable(AheadOfTime):
    """`module(x)` with its backward to `x` compiled ahead of time into two packages (`mode` "on" compiles them when
    missing, "if_cached" only loads them, "off" runs the module)."""

    forward_runner: Any = None
    backward_runner: Any = None

    def __init__(self, module: torch.nn.Module, name: str, mode: str, identity: dict[str, Any]) -> None:
        super().__init__(module, name, mode, identity)
        # the frozen weights, looked up once: the graphs' inputs after `x`, passed at every call
        named = dict(module.named_parameters()) | dict(module.named_buffers())
        self.weight_names, self.weights = list(named), list(named.values())

    def _functional(self, x: Tensor, *weights: Tensor) -> Tensor:
        return torch.func.functional_call(self.module, dict(zip(self.weight_names, weights)), (x,))

    def _ready(self) -> bool:
        return self.forward_runner is not None

    def _drop(self) -> None:
        self.forward_runner = self.backward_runner = None

    def _run(self, args: tuple) -> Tensor:
        return _Joined.apply(self, args[0].contiguous(), *self.weights)

    def _decide(self, args: tuple) -> None:
        package = self.package(args)
        forward_path, backward_path = package.with_suffix(".forward.pt2"), package.with_suffix(".backward.pt2")
        if self._uncached(forward_path):  # the forward's file is written last: both or neither
            return
        if not forward_path.is_file():
            self._compile(args[0], forward_path, backward_path)
        began = time.perf_counter()
        self.forward_runner, self.backward_runner = load_package(forward_path), load_package(backward_path)
        log.info("loaded the %s's compiled packages in %.1f s", self.name, time.perf_counter() - began)

    def _graphs(self, x: Tensor) -> dict[str, torch.fx.GraphModule]:
        """AOT autograd's partitioned forward and backward graphs of the call at `x`, from one traced call and a
        backward of a zero gradient. The forward returns the output then the tensors saved for the backward, which
        takes those tensors then the output's gradient and returns the input's gradient first."""
        from functorch.compile import aot_function, make_boxed_func, min_cut_rematerialization_partition

        graphs: dict[str, torch.fx.GraphModule] = {}

        def keep(part: str):
            def compiler(graph: torch.fx.GraphModule, inputs: list) -> Any:
                graphs[part] = graph
                return make_boxed_func(graph)
            return compiler

        traced = aot_function(self._functional, fw_compiler=keep("forward"), bw_compiler=keep("backward"),
                              partition_fn=min_cut_rematerialization_partition)
        with torch.enable_grad():
            sample = x.detach().contiguous().requires_grad_(True)
            output = traced(sample, *self.weights)
            torch.autograd.grad(output, sample, torch.zeros_like(output))
        return graphs

    def _compile(self, x: Tensor, forward_path: Path, backward_path: Path) -> None:
        """Both packages, the backward compiled for the very tensors (strides included) that the compiled forward
        saves: the compiled code trusts its inputs' layout. The forward's file is moved in place last."""
        import torch._inductor

        enable_persistent_caches()
        began = time.perf_counter()
        graphs = self._graphs(x)

        def compile_graph(graph: torch.fx.GraphModule, examples: tuple, path: Path) -> None:
            with torch.no_grad():
                exported = torch.export.export(graph, examples, strict=False)
                torch._inductor.aoti_compile_and_package(exported, package_path=str(path))

        def forward_then_backward(forward_tmp: Path) -> None:
            examples = (x.detach().contiguous(), *self.weights)
            compile_graph(graphs["forward"], examples, forward_tmp)
            with torch.no_grad():
                output, *saved = load_package(forward_tmp)(*examples)
            write_atomic(backward_path, lambda tmp: compile_graph(
                graphs["backward"], (*saved, torch.zeros_like(output).contiguous()), tmp))

        write_atomic(forward_path, forward_then_backward)
        log.info("compiled the %s (forward and backward) ahead of time in %.0f s (cached in %s)", self.name,
                 time.perf_counter() - began, forward_path.parent)
