"""CUDA extensions vs the PyTorch reference: encoders, ray marching, and the --O renderer's training passes.

Every row times the same inputs through both backends on one device (CUDA-event medians on the GPU). The
encoder and marching rows isolate one op each; the marching rows drive the real `Renderer` with an analytic
ball in place of the network, so only marching, compositing and their glue are timed. The last two rows use
the real `RadianceField` + `Renderer` of `nerf.build.build_run` with default `--O` options, fitted prior-free to
the bundled example for a few hundred iterations so that rays meet a realistic density.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from nerf.benchmarks import common
from nerf.errors import UserError

ROOT = common.ROOT
EXTENSIONS = ("gridencoder", "shencoder", "freqencoder", "raymarching")
COLUMNS = ["op", "size", "cuda_ms", "torch_ms", "speedup"]
BALL_RADIUS = 0.5
# The project's goals on an H100: row name -> most milliseconds for the CUDA path, and the least speed-ups.
TIME_TARGETS = {
    "hash grid fwd+bwd": 1.0,
    "synthetic render fwd+bwd": 8.0,
    "real-view render fwd+bwd": 5.0,
}
SPEEDUP_TARGETS = {"hash grid fwd+bwd": 20.0, "march+composite train fwd+bwd": 20.0,
                   "march+composite inference": 20.0}


@dataclasses.dataclass(frozen=True)
class Sizes:
    points: int  # grid / SH / frequency encoder batch
    levels: int  # grid levels of the encoder rows
    hash_log2: int  # log2 table size of the hash-grid rows
    train_rays: int
    frame: int  # inference frame side
    march_grid: int  # occupancy grid side of the marching rows
    max_steps: int  # samples per ray at most, marching rows
    synthetic: int  # synthetic training render side
    real_rays: int
    field_iters: int  # prior-free iterations that give the --O field its density
    field_options: tuple[str, ...]  # extra options of the --O field (small ones for a CPU smoke run)


FULL = Sizes(1 << 18, 16, 19, 4096, 128, 128, 512, 96, 4096, 300, ())
QUICK = Sizes(1 << 10, 4, 12, 64, 8, 32, 64, 8, 64, 2,
              ("--HW_real", "16", "--occupancy_grid_size", "16", "--num_rays", "64", "--max_steps", "64",
               "--grid_levels", "4", "--grid_levels_mask", "0", "--log2_hashmap_size", "12"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke runs: both columns are "
                        "the reference there, the compiled kernels need CUDA tensors)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (seconds on a CPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls per row and backend (default 5, 1 with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per row and backend (default 20, 2 with --quick)")
    parser.add_argument("--budget_s", type=float, default=3.0,
                        help="about this many seconds per measurement: slow paths get fewer repeats (at least 3, or "
                             "--repeats if that is fewer)")
    parser.add_argument("--field_iters", type=int, default=None,
                        help="prior-free iterations fitting the --O field before it is timed (default 300, 2 with "
                             "--quick)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the CUDA path of the rows with a time goal (torch.profiler, top ops)")


# --- timing -------------------------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, budget_s: float) -> float:
    """`common.median_ms` with the repeats cut so that a slow path (the reference) takes about `budget_s`."""
    began = time.perf_counter()
    fn()  # the first warm-up call, timed roughly to size the rest
    _synchronize(device)
    first = time.perf_counter() - began
    count = min(repeats, max(3, int(budget_s / max(first, 1e-6))))  # at least 3 unless fewer were asked
    return common.median_ms(fn, device, warmup=min(max(warmup - 1, 0), count), repeats=count)


def half_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """fp16 autocast as `--O` trains on the GPU (the trainer keeps fp32 on the CPU)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def precision(device: torch.device) -> str:
    """How the autocast rows run: the label of their size column."""
    return "fp16 autocast" if device.type == "cuda" else "fp32 (CPU)"


# --- encoders -------------------------------------------------------------------------------------------------
def encoder_pass(encoder: nn.Module, inputs: Tensor, grad: Tensor, autocast: bool) -> Callable[[], None]:
    """Forward then backward with a fixed output gradient (into the table, or the inputs if they need it)."""
    device = inputs.device

    def run() -> None:
        encoder.zero_grad(set_to_none=True)
        inputs.grad = None
        with half_autocast(device) if autocast else contextlib.nullcontext():
            out = encoder(inputs)
        out.backward(grad.to(out.dtype).reshape(out.shape))

    return run


def encoder_cases(device: torch.device, fast: str, sizes: Sizes) -> list[tuple[str, str, dict[str, Callable]]]:
    from freqencoder import FreqEncoder
    from gridencoder import GridEncoder
    from shencoder import SHEncoder

    gen = torch.Generator(device=device).manual_seed(0)
    n = sizes.points
    points = torch.rand(n, 3, generator=gen, device=device) * 2 - 1
    dirs = nn.functional.normalize(torch.randn(n, 3, generator=gen, device=device), dim=-1).requires_grad_()
    count = f"2^{int(math.log2(n))}"

    def pair(make: Callable[[str], nn.Module], inputs: Tensor, autocast: bool) -> dict[str, Callable]:
        modules = {"cuda": make(fast).to(device), "torch": make("torch").to(device)}
        modules["torch"].load_state_dict(modules["cuda"].state_dict())
        out_dim = modules["cuda"].output_dim
        grad = torch.randn(n, out_dim, generator=gen, device=device)
        return {name: encoder_pass(m, inputs, grad, autocast) for name, m in modules.items()}

    levels, table = sizes.levels, min(sizes.hash_log2, 16)

    def hash_grid(backend: str) -> nn.Module:
        return GridEncoder(3, levels, 2, base_resolution=16, log2_hashmap_size=sizes.hash_log2,
                           desired_resolution=2048, gridtype="hash", backend=backend)

    def tiled_grid(backend: str) -> nn.Module:  # the field's encoder under default options (bound 0.75)
        return GridEncoder(3, levels, 2, base_resolution=16, log2_hashmap_size=table,
                           desired_resolution=2048 * 0.75, gridtype="tiled", backend=backend)

    class Stencil(nn.Module):
        """The field's encoder on a sample and its six finite-difference neighbours (fused on CUDA)."""

        def __init__(self, backend: str) -> None:
            super().__init__()
            self.encoder = tiled_grid(backend)
            self.output_dim = 7 * self.encoder.output_dim

        def forward(self, x: Tensor) -> Tensor:
            return self.encoder.stencil(x * 0.75, 0.75, 0.01)

    half, grid = precision(device), f"{count} pts, {levels} lv x 2"
    return [
        ("hash grid fwd+bwd", f"{grid}, 2^{sizes.hash_log2} table, fp32", pair(hash_grid, points, False)),
        ("hash grid fwd+bwd", f"{grid}, 2^{sizes.hash_log2} table, {half}",
         pair(hash_grid, points, True)),
        ("tiled grid fwd+bwd (--O field)", f"{grid}, 2^{table} table, {half}",
         pair(tiled_grid, points, True)),
        ("tiled grid, 7-point stencil fwd+bwd", f"{grid} (x7 neighbours at 0.01), 2^{table} table, {half}",
         pair(Stencil, points, True)),
        ("SH encoding fwd+bwd", f"{count} dirs, degree 4 (input grad)",
         pair(lambda b: SHEncoder(3, 4, backend=b), dirs, False)),
        ("frequency encoding fwd+bwd", f"{count} dirs, degree 6 (background; input grad)",
         pair(lambda b: FreqEncoder(3, 6, backend=b), dirs, False)),
    ]


# --- ray marching with an analytic field ---------------------------------------------------------------------
class BallField(nn.Module):
    """A dense ball (density 30, 0.5 elsewhere) with a colour ramp: the learned field's place in the marching rows
    (a `nerf.field.Field`; unshaded, no normals, no background, so the renderer composites on white)."""

    grid_levels_mask = 0

    def __init__(self) -> None:
        super().__init__()
        self.inside = nn.Parameter(torch.tensor(30.0))
        self.ramp = nn.Parameter(torch.tensor(4.0))

    def density(self, x: Tensor) -> dict[str, Tensor]:
        sigma = self.inside * (x.norm(dim=-1) < BALL_RADIUS).float() + 0.5
        return {"sigma": sigma, "albedo": torch.sigmoid(x * self.ramp)}

    def normal(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(x, dim=-1)

    def background(self, d: Tensor) -> None:
        return None

    def forward(self, x: Tensor, d: Tensor | None = None, light_d: Tensor | None = None, ratio: float = 1.0,
                shading: str = "albedo", need_normals: bool = False) -> tuple[Tensor, Tensor, None]:
        out = self.density(x)
        return out["sigma"], out["albedo"], None


def ball_renderer(backend: str, device: torch.device, sizes: Sizes):
    """A Renderer (default bound) around BallField, with the ball's cells marked occupied."""
    from nerf.renderer import Renderer

    renderer = Renderer(BallField(), bound=0.75, max_steps=sizes.max_steps, grid_size=sizes.march_grid,
                        backend=backend).to(device)
    size = renderer.grid_size
    cells = renderer.ops.morton3D_invert(torch.arange(size**3, dtype=torch.int32, device=device)).float()
    centres = ((cells + 0.5) / size * 2 - 1) * renderer.bound
    inside = (centres.norm(dim=-1) < BALL_RADIUS + 2 * renderer.bound / size).float()
    renderer.density_grid.copy_(inside.expand_as(renderer.density_grid))
    renderer.ops.packbits(renderer.density_grid, 0.5, renderer.density_bitfield)
    return renderer


def marching_cases(device: torch.device, fast: str, sizes: Sizes) -> list[tuple[str, str, dict[str, Callable]]]:
    from nerf.cameras import fixed_cameras
    from nerf.renderer import RenderSettings

    gen = torch.Generator().manual_seed(0)
    camera = fixed_cameras(90.0, torch.zeros(1), 2.0, 40.0, sizes.frame).to(device)
    train_o, train_d, _ = fixed_cameras(90.0, torch.zeros(1), 2.0, 40.0, 128).to(device).rays(sizes.train_rays, gen)
    frame_o, frame_d, _ = camera.rays()
    renderers = {"cuda": ball_renderer(fast, device, sizes), "torch": ball_renderer("torch", device, sizes)}

    def train(renderer) -> Callable[[], None]:
        def run() -> None:
            renderer.train()
            renderer.zero_grad(set_to_none=True)
            out = renderer.render(train_o, train_d, RenderSettings(perturb=True))
            (out["image"].sum() + out["weights_sum"].sum()).backward()

        return run

    def infer(renderer) -> Callable[[], None]:
        def run() -> None:
            renderer.eval()
            with torch.no_grad():
                renderer.render(frame_o, frame_d, RenderSettings())

        return run

    return [
        ("march+composite train fwd+bwd", f"{sizes.train_rays} rays, ball field, max_steps {sizes.max_steps}",
         {k: train(r) for k, r in renderers.items()}),
        ("march+composite inference", f"{sizes.frame}x{sizes.frame} frame, ball field",
         {k: infer(r) for k, r in renderers.items()}),
    ]


# --- the --O field and renderer -------------------------------------------------------------------------------
def field_args(sizes: Sizes, workdir: Path) -> list[str]:
    """main.py's command line of the --O field the renderer rows time (prior-free on the bundled example)."""
    from nerf.options import DEFAULT_IMAGE

    return ["--O", "--lambda_prior", "0", "--image_path", str(ROOT / DEFAULT_IMAGE), "--seed", "0",
            "--workspace", str(workdir / "fast"), *sizes.field_options]


def fitted_trainers(device: torch.device, sizes: Sizes, iters: int, workdir: Path):
    """Trainers of the compiled and the reference backend sharing one field fitted prior-free for `iters` steps."""
    from nerf.build import build_run
    from nerf.option_checks import parse

    opt = parse(field_args(sizes, workdir))
    fast = build_run(opt).trainer
    fast.renderer.train()
    with torch.no_grad(), fast.autocast():
        fast.renderer.update_occupancy()
    for _ in range(iters):
        fast.train_step()
    torch_only = dataclasses.replace(opt, render=dataclasses.replace(opt.render, cuda_ray=False),
                                     workspace=str(workdir / "ref"))
    reference = build_run(torch_only).trainer
    reference.renderer.load_state_dict(fast.renderer.state_dict())
    for trainer in (fast, reference):
        trainer.renderer.to(device)
    return {"cuda": fast, "torch": reference}


def synthetic_pass(trainer, rays_o: Tensor, rays_d: Tensor, light_d: Tensor, sds_grad: Tensor,
                   device: torch.device) -> Callable[[], None]:
    """The synthetic step's render with Lambertian shading and normals, its regularisers (the objective's own),
    and backward; a fixed image gradient stands in for score distillation."""
    from nerf.renderer import RenderSettings

    renderer, size, step = trainer.renderer, sds_grad.shape[-1], trainer.global_step
    settings = RenderSettings(shading="lambertian", ratio=0.1, light_d=light_d, perturb=True, need_normals=True)

    def run() -> None:
        renderer.train()
        renderer.zero_grad(set_to_none=True)
        with half_autocast(device):
            out = renderer.render(rays_o, rays_d, settings)
            image = out["image"].reshape(1, size, size, 3).permute(0, 3, 1, 2)
            regularisers = trainer.objective.regularisers(out, size, step)
            loss = (image * sds_grad).sum() + sum(regularisers.values())
        loss.backward()

    return run


def real_pass(trainer, rays_o: Tensor, rays_d: Tensor, target: Tensor, device: torch.device) -> Callable[[], None]:
    """The input-view step: albedo render of random pixels, the objective's image and mask terms, backward."""
    from nerf.renderer import RenderSettings

    renderer, step = trainer.renderer, trainer.global_step
    settings = RenderSettings(shading="albedo", ratio=1.0, perturb=True)

    def run() -> None:
        renderer.train()
        renderer.zero_grad(set_to_none=True)
        with half_autocast(device):
            out = renderer.render(rays_o, rays_d, settings)
            loss = sum(trainer.objective.real_terms(out, target, step).values())
        loss.backward()

    return run


def coverage(trainer, rays_o: Tensor, rays_d: Tensor) -> float:
    """Share of rays that end on the object (opacity > 0.5): shows the timed renders meet real density."""
    from nerf.renderer import RenderSettings

    trainer.renderer.eval()
    with torch.no_grad():
        out = trainer.renderer.render(rays_o, rays_d, RenderSettings())
    return float((out["weights_sum"] > 0.5).float().mean())


def renderer_cases(device: torch.device, sizes: Sizes, iters: int,
                   workdir: Path) -> list[tuple[str, str, dict[str, Callable]]]:
    from nerf.cameras import fixed_cameras

    trainers = fitted_trainers(device, sizes, iters, workdir)
    data, real_view = trainers["cuda"].objective.views.data, trainers["cuda"].real_view.to(device)
    radius = sum(data.radius_range) / 2
    side = fixed_cameras(data.pose_angle, torch.tensor([90.0]), radius, data.default_fovy, sizes.synthetic)
    syn_o, syn_d, _ = side.to(device).rays()
    light_d = side.centers[0].to(device)
    gen = torch.Generator().manual_seed(0)
    sds_grad = torch.randn(1, 3, sizes.synthetic, sizes.synthetic, generator=gen).to(device) * 1e-3
    real_o, real_d, target = real_view.sample(sizes.real_rays, gen)
    syn_cover, real_cover = coverage(trainers["cuda"], syn_o, syn_d), coverage(trainers["cuda"], real_o, real_d)
    half = precision(device)
    side_px = f"{sizes.synthetic}x{sizes.synthetic}"
    return [
        ("synthetic render fwd+bwd", f"{side_px}, lambertian + normals, {half}, {syn_cover:.0%} on object",
         {k: synthetic_pass(t, syn_o, syn_d, light_d, sds_grad, device) for k, t in trainers.items()}),
        ("real-view render fwd+bwd", f"{sizes.real_rays} rays, albedo, {half}, {real_cover:.0%} on object",
         {k: real_pass(t, real_o, real_d, target, device) for k, t in trainers.items()}),
    ]


# --- reporting ------------------------------------------------------------------------------------------------
def extension_load_seconds(device: torch.device) -> dict[str, dict]:
    """Load (and on a fresh machine JIT-build) each extension through its package's own `cuda_build` copy, whose
    cache the package then reuses; seconds and how it was found."""
    if device.type != "cuda":
        return {}
    found = {}
    for name in EXTENSIONS:
        cuda_build = importlib.import_module(f"{name}.cuda_build")
        began = time.perf_counter()
        module, how = cuda_build.load_extension(name, ROOT / name)
        if module is None:
            raise UserError(f"the CUDA {name} extension is unavailable ({how}); fix that before benchmarking it")
        found[name] = {"seconds": round(time.perf_counter() - began, 2), "how": how}
    return found


def profile(fn: Callable[[], None], device: torch.device, iters: int = 5) -> str:
    """Top ops of `fn` by self time on the device, and how busy the device is per call."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    _synchronize(device)
    began = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
        _synchronize(device)
    wall_ms = 1000 * (time.perf_counter() - began) / iters
    events = prof.key_averages()
    if device.type == "cuda":  # kernels are the device-side events; CPU ops' device time would count them twice
        key = "self_device_time_total"
        busy_us = sum(e.self_device_time_total for e in events
                      if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    else:
        key = "self_cpu_time_total"
        busy_us = sum(e.self_cpu_time_total for e in events)
    busy_ms = busy_us / 1000 / iters
    head = (f"per call (profiled): wall {wall_ms:.2f} ms, {device.type} busy {busy_ms:.2f} ms, "
            f"{sum(e.count for e in events) / iters:.0f} profiled events")
    return head + "\n" + events.table(sort_by=key, row_limit=12, max_name_column_width=48)


def check_targets(rows: list[dict]) -> list[dict]:
    """Every goal against its row (the first row of that name: fp32 for the hash grid)."""
    first = {}
    for row in rows:
        first.setdefault(row["op"], row)
    verdicts = []
    for op, limit in TIME_TARGETS.items():
        value = first[op]["cuda_ms"]
        verdicts.append({"target": f"{op} <= {limit} ms", "value": value, "met": value <= limit})
    for op, limit in SPEEDUP_TARGETS.items():
        value = first[op]["speedup"]
        verdicts.append({"target": f"{op}: cuda >= {limit}x reference", "value": value, "met": value >= limit})
    return verdicts


def call_counts(args: argparse.Namespace) -> tuple[int, int, int]:
    """--warmup, --repeats and --field_iters, with the defaults of a full or a --quick run for those not given."""
    sizes = QUICK if args.quick else FULL
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 20)
    return warmup, repeats, args.field_iters if args.field_iters is not None else sizes.field_iters


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device for the kernel benchmark; run it on a GPU machine or pass --device cpu")
    sizes = QUICK if args.quick else FULL
    warmup, repeats, iters = call_counts(args)
    fast = "cuda" if device.type == "cuda" else "auto"  # "auto" serves CPU tensors with the reference
    info = common.device_info(device)
    info["extensions"] = extension_load_seconds(device)
    info["cuda_column"] = "compiled kernels" if device.type == "cuda" else "reference (CPU tensors)"
    info.update(quick=bool(args.quick), warmup=warmup, repeats=repeats, budget_s=args.budget_s, field_iters=iters)

    for name, found in info["extensions"].items():
        print(f"{name}: {found['how']} ({found['seconds']:.1f} s)", flush=True)

    rows, profiles = [], {}
    with tempfile.TemporaryDirectory(prefix="kernel-bench-") as workdir:
        groups = (lambda: encoder_cases(device, fast, sizes), lambda: marching_cases(device, fast, sizes),
                  lambda: renderer_cases(device, sizes, iters, Path(workdir)))
        for group in groups:  # one group's inputs at a time
            for op, size, passes in group():
                row = {"op": op, "size": size}
                for backend, fn in passes.items():
                    row[f"{backend}_ms"] = timed_ms(fn, device, warmup, repeats, args.budget_s)
                row["speedup"] = row["torch_ms"] / row["cuda_ms"]
                rows.append(row)
                print(f"{op} [{size}]: cuda {row['cuda_ms']:.3f} ms, torch {row['torch_ms']:.3f} ms", flush=True)
                if args.profile and op in TIME_TARGETS and op not in profiles:
                    profiles[op] = profile(passes["cuda"], device)
                    print(f"\n-- profile of the cuda path: {op}\n{profiles[op]}\n", flush=True)
    result = {"info": info, "rows": rows, "columns": COLUMNS, "profiles": profiles}
    if device.type == "cuda":
        result["targets"] = check_targets(rows)
        for verdict in result["targets"]:
            print(f"{'met ' if verdict['met'] else 'MISS'} {verdict['target']}: {verdict['value']:.3f}")
    return result
