"""Compiling the frozen diffusion networks of score distillation (`--compile auto|on|off`).

Compiling the UNet call and the VAE encoder fuses their many small kernels, but the first compilation adds one to a
few minutes (on an H100 with 16 cores: 63 s under torch.compile, a 220.7 s warm-up for the UNet's and the
VAE encoder's packages; README "Performance"): more than a default run of 5000 iterations earns back, and a host
with fewer cores compiles slower. Inductor keeps what it compiled in a persistent per-user cache (`cache_dir`), so
later runs of the same model, card and shapes load the compiled code instead of compiling it again.

The one rule of ``auto`` (`resolve`): compile only on CUDA, only when the run is at least `AUTO_MIN_ITERS`
iterations long, and only a function whose compiled code for this model, card, torch and input shapes is
already in the cache (a marker written after its first successful compiled call, by ``--compile on``, e.g. in an
earlier run or the benchmark). A cold compile never happens under ``auto``, so ``auto`` never makes a run slower
by a compilation it cannot earn back.

With the CUDA graphs of ``--cuda_graph`` the compiled function is what the graph captures and replays (the graph
removes the launch cost, compilation the kernels' count and memory traffic; the README measures both together).
A compilation that fails warns once and the function runs eagerly.

A warm cache still spends seconds at the first call: dynamo traces the function again in every process. Calls given
as modules avoid that: they are compiled ahead of time (AOTInductor) into packages that a later process loads
without tracing, the packages being their markers: the no-grad UNet calls by `Packaged`, the VAE encoder with its
backward by `nerf.packaged_backward.PackagedDifferentiable`. Functions (textual inversion's calls) keep
torch.compile. PyTorch's
experimental DynamoCache (`TORCH_CACHING_PRECOMPILE=1`) also keeps the traced frames, but it writes them only when
asked (`torch.compiler.save_cache_artifacts`); under that variable a compiled function asks once, after its first
compiled call, so that the next process skips the tracing too (only for a process that traced something the cache
did not hold). Off by default: an experiment of PyTorch's, keyed by the function's name and line alone (its guards
decide whether a stored frame fits another model); a function compiled with its backward is traced again anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from nerf.errors import reason
from nerf.fileio import write_atomic, write_text_atomic

log = logging.getLogger("realfusion")
COMPILE_MODES = ("auto", "on", "off")
# A warm-cache load still traces the networks: on an H100 (README "Performance") it added 12.9 s to the warm-up and
# saved 16.7 ms per iteration, so it pays back after about 770 iterations; 1000 leaves a margin for slower hosts.
AUTO_MIN_ITERS = 1000
DEFAULT_CACHE = Path.home() / ".cache" / "realfusion" / "inductor"
MARKERS = "realfusion-compiled"
PACKAGES = "realfusion-packages"


def cache_dir() -> Path:
    """Inductor's cache folder: $TORCHINDUCTOR_CACHE_DIR if set, else a persistent per-user folder (set here, so
    that compiled code outlives the temporary folder inductor would otherwise use)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(DEFAULT_CACHE))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def enable_persistent_caches() -> None:
    """Inductor's compiled-graph and compiled-autograd caches on, unless the user's environment says otherwise."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    cache_dir()
    if "TORCHINDUCTOR_FX_GRAPH_CACHE" not in os.environ:
        inductor_config.fx_graph_cache = True
    if "TORCHINDUCTOR_AUTOGRAD_CACHE" not in os.environ:
        functorch_config.enable_autograd_cache = True


def resolve(mode: str, device: torch.device, iters: int) -> str:
    """The compile mode of a run: "on", "off", or "if_cached" (compile what the cache already holds)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {COMPILE_MODES}")
    if mode != "auto":
        return mode
    return "if_cached" if device.type == "cuda" and iters >= AUTO_MIN_ITERS else "off"


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return [list(value.shape), str(value.dtype), value.requires_grad]
    return repr(value)


def cache_key(name: str, identity: dict[str, Any], args: tuple) -> str:
    """What makes one compiled function's code reusable: model, precision, card, torch and input shapes."""
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    key = json.dumps({"name": name, "identity": identity, "inputs": [_describe(a) for a in args],
                      "torch": torch.__version__, "card": card}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def marker_path(name: str, identity: dict[str, Any], args: tuple) -> Path:
    """Where the marker of one compiled function lives."""
    return cache_dir() / MARKERS / f"{cache_key(name, identity, args)}.json"


def package_path(name: str, identity: dict[str, Any], args: tuple) -> Path:
    """Where the AOTInductor package of one module call lives (`Packaged`). A package holds host code built for this
    machine's instruction set (its C++ wrapper, and its kernels on the CPU), so the key names it too: a cache shared
    by the nodes of a cluster never hands one node's package to another kind of processor."""
    host = {"machine": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return cache_dir() / PACKAGES / f"{cache_key(name, {**identity, 'host': host}, args)}.pt2"


def load_package(package: Path) -> Any:
    """The package's callable, run single-threaded: the container's thread-safe run queries and waits on CUDA
    events, which a CUDA graph capture forbids; this process calls the module from one thread only.

    Made by torch's package loader itself rather than `aoti_load_package`, which also compares the package's
    instruction set with this machine's by compiling and loading probe programs in child processes (about 16 s
    of a fresh process on the GPU host) only to print a warning; the package's key already names the host."""
    from torch._inductor.package.package import AOTICompiledModel

    return AOTICompiledModel(torch._C._aoti.AOTIModelPackageLoader(str(package), "model", True, 1, -1))


class Compiled:
    """`fn` through torch.compile (static shapes) when `mode` says so, else `fn` itself; see the module's rule."""

    def __init__(self, fn: Callable[..., Any], name: str, mode: str, identity: dict[str, Any]) -> None:
        """`identity`: what makes the compiled code this model's (configuration, precision), for the marker."""
        self.fn = fn
        self.name = name
        self.mode = mode
        self.identity = identity
        self.compiled: Callable[..., Any] | None = None
        self.marker: Path | None = None  # written after the first compiled call, then None
        self.decided = mode == "off"
        self.failed = False

    def _decide(self, args: tuple) -> None:
        self.decided = True
        marker = marker_path(self.name, self.identity, args)
        if self.mode == "if_cached" and not marker.is_file():
            log.info("--compile auto: the %s runs eagerly (no compiled code cached for it; --compile on compiles "
                     "and caches it)", self.name)
            return
        enable_persistent_caches()
        self.compiled = torch.compile(self.fn, dynamic=False)
        self.marker = marker

    def __call__(self, *args: Any) -> Any:
        if not self.decided:
            self._decide(args)
        if self.compiled is None:
            return self.fn(*args)
        began = time.perf_counter()
        try:
            out = self.compiled(*args)
        except Exception as exc:  # compiler or toolchain failure: the eager function is the same maths
            self.compiled, self.failed = None, True
            log.warning("torch.compile of the %s failed (%s: %s); running it eagerly. --compile off skips the "
                        "attempt.", self.name, type(exc).__name__, reason(exc))
            return self.fn(*args)
        if self.marker is not None:  # the first compiled call: traced, then compiled or loaded from the cache
            spent = time.perf_counter() - began
            if not self.marker.is_file():
                self.marker.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.marker, json.dumps({"name": self.name, "identity": self.identity},
                                                          default=str) + "\n")
                log.info("compiled the %s in %.1f s (cached in %s)", self.name, spent, cache_dir())
            else:
                log.info("traced the %s and loaded its compiled code in %.1f s", self.name, spent)
            self.marker = None
            save_traced_frames(self.name)
        return out


def code_identity(module: torch.nn.Module) -> dict[str, Any]:
    """What else a package's compiled graph depends on: its weights' names, shapes, dtypes and layouts, the module's
    class, the sources of its package folder (its forward and the helpers beside it, e.g. `nerf/guidance/`) and the
    diffusers version (the networks' code), so that edited code or another library version compiles a new package
    instead of running a stale one."""
    import inspect

    import diffusers

    folder = Path(inspect.getsourcefile(type(module)) or "").parent
    source = hashlib.sha256()
    for file in sorted(folder.glob("*.py")):
        source.update(file.name.encode() + file.read_bytes())
    state = [[fqn, list(t.shape), str(t.dtype), list(t.stride())] for fqn, t in module.state_dict().items()]
    return {"class": type(module).__qualname__, "source": source.hexdigest(),
            "diffusers": diffusers.__version__,
            "state": hashlib.sha256(json.dumps(state).encode()).hexdigest()}


class AheadOfTime:
    """What the ahead-of-time compiled calls share: the first call decides (load the packages, compile them, or run
    the module eagerly under `if_cached` without them), and any failure warns once and runs the module from then on:
    the module is the same maths. Subclasses load and run their packages."""

    def __init__(self, module: torch.nn.Module, name: str, mode: str, identity: dict[str, Any]) -> None:
        """`identity`: what makes the compiled code this module's (configuration, precision, weight layout)."""
        self.module = module
        self.name = name
        self.mode = mode
        self.identity = identity
        self.decided = mode == "off"
        self.failed = False

    def package(self, args: tuple) -> Path:
        """The key's path for these inputs (a subclass may keep several files beside it)."""
        return package_path(self.name, {**self.identity, **code_identity(self.module)}, args)

    def _uncached(self, path: Path) -> bool:
        """Whether the module runs eagerly: `if_cached` and no package at `path` (never a cold compilation)."""
        if self.mode != "if_cached" or path.is_file():
            return False
        log.info("--compile auto: the %s runs eagerly (no compiled package cached for it; --compile on compiles and "
                 "caches it)", self.name)
        return True

    def _decide(self, args: tuple) -> None:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _run(self, args: tuple) -> Any:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    def __call__(self, *args: Any) -> Any:
        if not self.decided:
            self.decided = True
            try:
                self._decide(args)
            except Exception as exc:  # tracer, exporter, compiler or toolchain failure
                return self._give_up(exc, args)
        if not self._ready():
            return self.module(*args)
        try:
            return self._run(args)
        except Exception as exc:
            return self._give_up(exc, args)

    def fail(self, exc: Exception) -> None:
        """Drop the compiled code and warn: the module runs eagerly from now on."""
        self._drop()
        self.failed = True
        log.warning("ahead-of-time compilation of the %s failed (%s: %s); running it eagerly. --compile off skips "
                    "the attempt.", self.name, type(exc).__name__, reason(exc))

    def _give_up(self, exc: Exception, args: tuple) -> Any:
        self.fail(exc)
        return self.module(*args)


class Packaged(AheadOfTime):
    """A no-grad module call compiled ahead of time by AOTInductor into a package on disk, else the module itself;
    `mode` follows the module's rule (the package is its own marker).

    `torch.compile` traces the function with dynamo again in every process, even when its compiled code is cached:
    seconds of a run's first iteration for Stable Diffusion's UNet. An AOTInductor package is the exported graph's
    compiled code as a shared library, loaded without tracing anything. Its weights are not in the package: they are
    the live module's (`load_constants(..., user_managed=True)`), so one package serves every model of the same
    configuration; constants derived from them (transposed views, casts) are folded at the first call after loading,
    which is right for frozen networks and would be stale for weights changed after that call."""

    runner: Any = None

    def _ready(self) -> bool:
        return self.runner is not None

    def _drop(self) -> None:
        self.runner = None

    def _run(self, args: tuple) -> Any:
        return self.runner(*args)

    def _decide(self, args: tuple) -> None:
        package = self.package(args)
        if self._uncached(package):
            return
        if not package.is_file():
            self._compile(args, package)
        began = time.perf_counter()
        runner = load_package(package)
        used = set(runner.get_constant_fqns())  # a buffer the graph never reads is not one of them
        weights = {fqn: tensor for fqn, tensor in self.module.state_dict().items() if fqn in used}
        runner.load_constants(weights, check_full_update=True, user_managed=True)
        self.runner = runner
        log.info("loaded the %s's compiled package in %.1f s", self.name, time.perf_counter() - began)

    def _compile(self, args: tuple, package: Path) -> None:
        import torch._inductor

        enable_persistent_caches()
        began = time.perf_counter()
        exported = torch.export.export(self.module, args, strict=False)  # under __call__'s no_grad
        configs = {"aot_inductor.package_constants_in_so": False,
                   "aot_inductor.use_runtime_constant_folding": True}
        write_atomic(package, lambda tmp: torch._inductor.aoti_compile_and_package(
            exported, package_path=str(tmp), inductor_configs=configs))
        log.info("compiled the %s ahead of time in %.0f s (cached in %s)", self.name, time.perf_counter() - began,
                 package)

    @torch.no_grad()
    def __call__(self, *args: Any) -> Any:
        return super().__call__(*args)


def save_traced_frames(name: str) -> None:
    """Write dynamo's traced frames to its DynamoCache when `TORCH_CACHING_PRECOMPILE=1` (see the module's note)
    and this process traced a function the cache did not hold; a failure costs only the saving: the next process
    traces again."""
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.utils import counters

    if not dynamo_config.caching_precompile or not counters["dynamo_cache"]["dynamo_cache_miss"]:
        return
    try:
        torch.compiler.save_cache_artifacts()
    except Exception as exc:  # an experimental cache: never let it break a run
        log.warning("could not save the traced %s for later runs (%s: %s)", name, type(exc).__name__, reason(exc))
