"""Reconstruction speed: the real Trainer loop of `main.py --O` with an SD-1.5-shaped random-weight model.

Two measurements of the same loop. The steady state times whole iterations, untouched, after warm-up
(median and mean of per-iteration wall times, each iteration started on an idle GPU; and the mean of as many
iterations run back to back, as a training run runs them). The split runs further iterations with a device
synchronisation around each stage (real-view render, synthetic render, VAE encode, UNet, backward,
optimiser and occupancy-grid update), so its stages add up to a little more than the untouched
iteration. All variants run in one process and share one loaded Stable Diffusion. `--full` also times a complete
default run through `main.main`: model loading, the iterations (mean over the run and by windows of
`--window` iterations), validations and checkpoints, the six test videos (their encoding apart) and the mesh
export, each apart. A variant that names a Zero-1-to-3 prior (e.g. ``--guidance sd+zero123``) runs with
Zero-1-to-3-XL's shapes and random weights (built once in --zero123_dir), unless it names its own --zero123_model.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import shlex
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from nerf.benchmarks import common
from nerf.benchmarks.sd15 import build_sd15
from nerf.guidance import prior_members
from nerf.options import DEFAULT_PROMPT

EXAMPLE = common.ROOT / "examples" / "natural-images" / "cat" / "rgba.png"
TOKEN = "_cat_"
STAGES = ("real_render", "synthetic_render", "vae_encode", "unet", "backward", "optimizer_grid", "other")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="diffusers folder to use (default: build the SD-1.5-shaped random model in --model_dir)")
    parser.add_argument("--model_dir", type=Path, default=Path.home() / ".cache" / "realfusion" / "sd15-random",
                        help="where the SD-1.5-shaped random model is built once and reused")
    parser.add_argument("--zero123_dir", type=Path,
                        default=Path.home() / ".cache" / "realfusion" / "zero123-xl-random",
                        help="where the Zero-1-to-3-XL-shaped random model is built once (variants naming zero123)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed iterations first (captures, autotuning)")
    parser.add_argument("--steps", type=int, default=100, help="timed iterations for the steady state")
    parser.add_argument("--split_steps", type=int, default=30, help="instrumented iterations for the split")
    parser.add_argument("--variants", default="default,--no_cuda_graph",
                        help="comma-separated extra main.py flags per measured variant ('default' = none)")
    parser.add_argument("--main_args", default="", help="more main.py flags for every variant, e.g. '--HW_synthetic 32'")
    parser.add_argument("--full", action="store_true", help="also time a complete default run through main.main")
    parser.add_argument("--window", type=int, default=1000, help="--full: iterations per window of the loop's times")
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler table of the steady state")
    parser.add_argument("--trace", type=Path, default=None,
                        help="profile (as --profile) and also write the profiled iterations as a gzipped Chrome trace "
                             "(chrome://tracing, Perfetto); a variant's index is added to the name")


def learned_embedding(folder: Path, width: int) -> Path:
    """A random learned token of the text encoder's width, saved as textual inversion saves it."""
    path = folder / "learned_embeds.bin"
    torch.save({TOKEN: torch.randn(width, generator=torch.Generator().manual_seed(0)) * 0.01}, path)
    return path


def main_argv(model: Path, embeds: Path, workspace: Path, extra: str) -> list[str]:
    return ["--O", "--image_path", str(EXAMPLE), "--learned_embeds_path", str(embeds), "--text", DEFAULT_PROMPT,
            "--pretrained_model_name_or_path", str(model), "--workspace", str(workspace), *shlex.split(extra)]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StageTimer:
    """Synchronised wall time per stage; a stage's time excludes the stages timed inside it."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []
        self.enabled = False

    def wrap(self, fn: Callable, stage: str | Callable[[], str]) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return fn(*args, **kwargs)
            name = stage() if callable(stage) else stage
            _sync()
            began = time.perf_counter()
            self.stack.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                _sync()
                spent = time.perf_counter() - began
                self.stack.pop()
                self.totals[name] += spent
                if self.stack:
                    self.totals[self.stack[-1]] -= spent
        return timed


@contextlib.contextmanager
def instrumented(trainer) -> Iterator[StageTimer]:
    """Time the stages of `trainer` by wrapping the objects it calls (the loop itself is untouched)."""
    timer = StageTimer()
    phase = {"name": "synthetic"}

    def in_phase(name: str, fn: Callable) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            phase["name"] = name
            return fn(*args, **kwargs)
        return run

    def render_stage() -> str:
        return f"{phase['name']}_render"

    renderer, scaler, objective = trainer.renderer, trainer.scaler, trainer.objective
    patches = [*[(objective, f"{half}_{view}", in_phase(view, getattr(objective, f"{half}_{view}")))
                 for view in ("real", "synthetic") for half in ("march", "shade")],
               (renderer, "march", timer.wrap(renderer.march, render_stage)),
               (renderer, "shade", timer.wrap(renderer.shade, render_stage)),
               (renderer, "update_occupancy", timer.wrap(renderer.update_occupancy, "optimizer_grid")),
               (scaler, "step", timer.wrap(scaler.step, "optimizer_grid")),
               (scaler, "update", timer.wrap(scaler.update, "optimizer_grid")),
               (torch.autograd, "backward", timer.wrap(torch.autograd.backward, "backward"))]
    for member in prior_members(objective.guidance) if objective.guidance is not None else ():
        patches += [(member, "moments", timer.wrap(member.moments, "vae_encode")),
                    (member, "predict_noise", timer.wrap(member.predict_noise, "unet"))]
    originals = [(owner, name, vars(owner).get(name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield timer
    finally:
        for owner, name, original in originals:
            if original is None:
                delattr(owner, name)  # the class's method shows through again
            else:
                setattr(owner, name, original)


class SampleRows:
    """Sample-buffer rows that the training marches hand the field, per iteration (both views together): what an
    iteration's field work grows with as the object fills the occupancy grid. Host-side sizes, no device read."""

    def __init__(self) -> None:
        self.by_step: dict[int, int] = defaultdict(int)
        self.step = 0

    @contextlib.contextmanager
    def counting(self, owner: Any) -> Iterator[None]:
        """Count the marches of `owner`: a renderer, or the Renderer class (every renderer of a run)."""
        march = owner.march

        def counted(*args: Any, **kwargs: Any) -> Any:
            marched = march(*args, **kwargs)
            self.by_step[self.step] += marched.samples[1].shape[0]
            return marched

        with common.patched([(owner, "march", counted)]):
            yield

    def mean(self, first: int = -math.inf, last: int = math.inf) -> float:
        """Mean rows per iteration over the steps in [first, last] (nan if none)."""
        rows = [n for step, n in self.by_step.items() if first <= step <= last]
        return statistics.mean(rows) if rows else math.nan


def iteration_times(trainer, steps: int, rows: SampleRows | None = None) -> list[float]:
    times = []
    for _ in range(steps):
        _sync()
        began = time.perf_counter()
        if rows is not None:
            rows.step = trainer.global_step + 1
        trainer.train_step()
        _sync()
        times.append(1000 * (time.perf_counter() - began))
    return times


def back_to_back_ms(trainer, steps: int) -> float:
    """Mean ms per iteration of `steps` iterations run as a training run runs them, without a synchronisation in
    between: the host prepares the next iteration while the GPU finishes the last one. `iteration_times` starts each
    iteration on an idle GPU, so its times also hold the host's work before the first launch."""
    _sync()
    began = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync()
    return 1000 * (time.perf_counter() - began) / steps


def covered_ms(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals in microseconds, in ms: time the GPU ran at least one kernel."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total / 1000


def profile_table(trainer, steps: int, trace: Path | None = None) -> str:
    """The profiler's table of `steps` iterations and, on a GPU, how much of their wall time a kernel was running:
    a busy share well below 100 % means the loop waits on the host (launches, synchronisations), not the GPU.
    `trace` also keeps the timeline, where the gaps between kernels show what the host was doing."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    _sync()
    began = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step()
        _sync()
    wall_ms = 1000 * (time.perf_counter() - began) / steps
    if trace is not None:
        write_trace(prof, trace)
    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    kernels = [(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
    if not kernels:
        return table
    busy = covered_ms(kernels) / steps
    return f"{table}\nGPU busy {busy:.1f} ms of {wall_ms:.1f} ms per iteration ({100 * busy / wall_ms:.0f} %, profiled)"


def write_trace(prof, path: Path) -> None:
    """The profiler's Chrome trace, gzipped (the JSON of ten iterations runs to tens of megabytes)."""
    import gzip
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        with raw.open("rb") as src, gzip.open(Path(tmp) / "trace.json.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        (Path(tmp) / "trace.json.gz").replace(path)


def zero123_flags(flags: str, args: argparse.Namespace) -> str:
    """A variant with a Zero-1-to-3 prior and no model of its own gets the XL-shaped random model."""
    if "zero123" not in flags or "--zero123_model" in flags:
        return flags
    from nerf.toy_models.tiny_zero123 import XL, write_model

    if not (args.zero123_dir / "model_index.json").is_file():
        write_model(args.zero123_dir, XL)
    return f"{flags} --zero123_model {shlex.quote(str(args.zero123_dir))}"


def measure_variant(model: Path, embeds: Path, workdir: Path, flags: str, args: argparse.Namespace,
                    trace: Path | None = None) -> dict[str, Any]:
    from nerf.build import open_run
    from nerf.option_checks import parse

    flags = zero123_flags(flags, args)
    opt = parse(main_argv(model, embeds, workdir / "workspace", f"{args.main_args} {flags}"))
    _sync()
    began = time.perf_counter()
    with open_run(opt) as run:  # the workspace is held while the benchmark trains in it
        _sync()
        load_s = time.perf_counter() - began
        row = {**measure_trainer(run.trainer, flags, args, trace), "load_s": load_s}
    del run  # the run's memory (graphs and compiled code included) is returned before the next variant
    # Each variant compiles afresh (from inductor's cache where it can): compiled frames kept across variants count
    # towards dynamo's recompilation limit, past which a later variant (e.g. another weight layout) ran eagerly.
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def measure_trainer(trainer, flags: str, args: argparse.Namespace, trace: Path | None = None) -> dict[str, Any]:
    """Median iteration time after warm-up, then the split per stage (and a profile if asked)."""
    trainer.renderer.train()
    trainer.renderer.update_occupancy()
    _sync()
    began = time.perf_counter()
    for _ in range(args.warmup):
        trainer.train_step()  # CUDA-graph captures and compilations happen here
    _sync()
    warmup_s = time.perf_counter() - began
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rows = SampleRows()
    with rows.counting(trainer.renderer):
        times = iteration_times(trainer, args.steps, rows)
    back_to_back = back_to_back_ms(trainer, args.steps)
    with instrumented(trainer) as timer:
        timer.enabled = True
        split_times = iteration_times(trainer, args.split_steps)
    per_step = {k: v * 1000 / args.split_steps for k, v in timer.totals.items()}
    per_step["other"] = statistics.mean(split_times) - sum(per_step.values())
    row: dict[str, Any] = {
        "variant": flags, "ms_per_iter": statistics.median(times), "mean_ms": statistics.mean(times),
        "it_per_s": 1000 / statistics.median(times), "back_to_back_ms": back_to_back,
        **{f"{k}_ms": per_step.get(k, 0.0) for k in STAGES},
        "projected_5000_s": 5 * statistics.median(times), "warmup_s": warmup_s, "sample_rows_k": rows.mean() / 1000,
        "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        "march_backend": trainer.renderer.ops.name, "grid_backend": trainer.field.encoder.backend_name,
    }
    if args.profile or trace is not None:
        row["profile"] = profile_table(trainer, 10, trace)
        print(row["profile"])
    return row


SLOWEST_SHOWN = 8  # the full run's slowest iterations listed by number


class PhaseClock:
    """Synchronised wall time of named phases, and the training loop's time by windows of iterations (minus the
    validations and checkpoints inside each window).

    Each iteration is also stamped where it starts (a CUDA event on the GPU, so the loop is not synchronised), which
    gives per-iteration times: their median is what the steady-state benchmark reports, their mean what the run
    costs, and the iterations that also update the occupancy grid are told apart from the others. An iteration
    followed by a validation or a checkpoint is left out of these statistics."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.phases: dict[str, float] = defaultdict(float)
        self.marks: list[tuple[int, float, float]] = []  # (step, time, time spent in excluded phases so far)
        self.excluded = 0.0
        self.stamps: list[tuple[int, Any]] = []  # (step that starts, CUDA event or host time)
        self.interrupted: set[int] = set()  # steps followed by an excluded phase
        self.grid_every = 0
        self.rows = SampleRows()

    @staticmethod
    def _stamp() -> Any:
        if not torch.cuda.is_available():
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def phase(self, name: str, method: Callable, excluded: bool = False) -> Callable:
        def run_phase(*a: Any, **k: Any) -> Any:
            _sync()
            began = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                _sync()
                spent = time.perf_counter() - began
                self.phases[name] += spent
                if excluded:
                    self.excluded += spent
                    if self.stamps:
                        self.interrupted.add(self.stamps[-1][0])
        return run_phase

    def stepping(self, method: Callable) -> Callable:
        def step(trainer: Any) -> Any:
            if not self.marks:
                _sync()
                self.marks.append((trainer.global_step, time.perf_counter(), self.excluded))
                self.grid_every = trainer.update_grid_every
            self.stamps.append((trainer.global_step + 1, self._stamp()))
            self.rows.step = trainer.global_step + 1
            result = method(trainer)
            if trainer.global_step % self.window == 0 or trainer.global_step == trainer.options.iters:
                _sync()
                self.marks.append((trainer.global_step, time.perf_counter(), self.excluded))
            return result
        return step

    def windows(self) -> list[dict[str, float]]:
        """ms per iteration of each window of the loop (its mean, and the median of its iterations)."""
        times = self.iteration_times()
        found = []
        for (s0, t0, e0), (s1, t1, e1) in zip(self.marks, self.marks[1:]):
            inside = [ms for step, ms in times.items() if s0 < step <= s1]
            found.append({"from": s0, "to": s1, "ms_per_iter": 1000 * ((t1 - t0) - (e1 - e0)) / (s1 - s0),
                          "median_ms": statistics.median(inside) if inside else math.nan,
                          "sample_rows_k": self.rows.mean(s0 + 1, s1) / 1000})
        return found

    def iteration_times(self) -> dict[int, float]:
        """ms from each iteration's start to the next one's, for iterations not followed by an excluded phase."""
        _sync()
        found = {}
        for (step, t0), (_, t1) in zip(self.stamps, self.stamps[1:]):
            if step not in self.interrupted:
                found[step] = t0.elapsed_time(t1) if isinstance(t0, torch.cuda.Event) else 1000 * (t1 - t0)
        return found

    def iteration_split(self) -> dict[str, float]:
        """Median and mean of the per-iteration times, the mean with and without an occupancy-grid update, and the
        slowest iterations (where one-time costs such as loading compiled code land)."""
        times = self.iteration_times()
        if not times:
            return {}
        grid, rest = [], []
        for step, ms in times.items():
            (grid if self.grid_every and step % self.grid_every == 0 else rest).append(ms)
        return {"median_ms": statistics.median(times.values()), "mean_ms": statistics.mean(times.values()),
                "grid_update_mean_ms": statistics.mean(grid) if grid else math.nan,
                "other_mean_ms": statistics.mean(rest) if rest else math.nan,
                "grid_update_every": self.grid_every,
                "slowest": sorted(times.items(), key=lambda item: -item[1])[:SLOWEST_SHOWN]}


def full_run(model: Path, embeds: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A complete default run (model loading, training, validations, videos, mesh) through main.main."""
    from nerf import build, mesh, outputs
    from nerf.benchmarks.mesh import STAGES as MESH_STAGES
    from nerf.cli import train as realfusion
    from nerf.option_checks import parse
    from nerf.renderer import Renderer
    from nerf.trainer import Trainer

    clock = PhaseClock(args.window)
    argv = [*main_argv(model, embeds, workdir / "full", args.main_args), "--save_mesh"]
    with common.patched([(build, "build_run", clock.phase("load_s", build.build_run)),
                  (build, "build_prior", clock.phase("prior_load_s", build.build_prior)),
                  (Trainer, "train_step", clock.stepping(Trainer.train_step)),
                  (Trainer, "validate", clock.phase("validate_s", Trainer.validate, excluded=True)),
                  (Trainer, "save", clock.phase("checkpoint_s", Trainer.save, excluded=True)),
                  (outputs, "render_videos", clock.phase("videos_s", outputs.render_videos)),
                  (outputs, "save_video", clock.phase("video_encoding_s", outputs.save_video)),
                  (outputs, "export_mesh", clock.phase("mesh_s", outputs.export_mesh)),
                  *((mesh, stage, clock.phase(f"mesh_{stage}_s", getattr(mesh, stage))) for stage in MESH_STAGES)]), \
            clock.rows.counting(Renderer):
        _sync()
        began = time.perf_counter()
        code = realfusion.main(argv)
        _sync()
        wall = time.perf_counter() - began
    iters = parse(argv).train.iters
    windows = clock.windows()
    loop_s = sum(w["ms_per_iter"] * (w["to"] - w["from"]) for w in windows) / 1000
    phases = dict(clock.phases)
    # what a default `main.py --O` run costs once its models are loaded: `--save_mesh` is not a default, and loading
    # depends on the disk, so both are reported apart
    default_run = wall - phases.get("load_s", 0.0) - phases.get("mesh_s", 0.0)
    return {"variant": "full run (main.main)", "exit_code": code, "wall_s": wall, "iters": iters,
            "default_run_s": default_run, **phases, "loop_s": loop_s,
            "training_loop_ms_per_iter": 1000 * loop_s / max(iters, 1),
            "windows": windows, "iterations": clock.iteration_split()}


def report_full(full: dict[str, Any]) -> str:
    """The full run in a few lines: where its time went."""
    lines = [f"default run (loading and --save_mesh's export apart): {full['default_run_s']:.1f} s",
             f"full run: {full['wall_s']:.1f} s (exit code {full['exit_code']}): loading {full.get('load_s', 0):.1f} s "
             f"(Stable Diffusion {full.get('prior_load_s', 0):.1f} s), {full['iters']} iterations "
             f"{full['loop_s']:.1f} s = {full['training_loop_ms_per_iter']:.1f} ms/iteration on average, validations "
             f"{full.get('validate_s', 0):.1f} s, checkpoints {full.get('checkpoint_s', 0):.1f} s, six videos "
             f"{full.get('videos_s', 0):.1f} s (encoding {full.get('video_encoding_s', 0):.1f} s), mesh export "
             f"{full.get('mesh_s', 0):.1f} s"]
    stages = {key[len("mesh_"):-len("_s")]: value for key, value in full.items()
              if key.startswith("mesh_") and key != "mesh_s"}
    if stages:
        lines.append("  mesh export: " + ", ".join(f"{stage} {spent:.2f} s" for stage, spent in stages.items())
                     + f", files and the rest {full.get('mesh_s', 0) - sum(stages.values()):.2f} s")
    lines += [f"  iterations {w['from'] + 1}-{w['to']}: {w['ms_per_iter']:.1f} ms/iteration (median "
              f"{w['median_ms']:.1f}), {w['sample_rows_k']:.0f}k sample rows per iteration" for w in full["windows"]]
    split = full.get("iterations")
    if split:
        lines.append(f"  per iteration: median {split['median_ms']:.1f} ms, mean {split['mean_ms']:.1f}; with an "
                     f"occupancy-grid update (every {split['grid_update_every']}) {split['grid_update_mean_ms']:.1f} "
                     f"ms, without {split['other_mean_ms']:.1f} ms")
        lines.append("  slowest iterations: " + ", ".join(f"#{step} {ms:.0f} ms" for step, ms in split["slowest"]))
    return "\n".join(lines)


@contextlib.contextmanager
def one_stable_diffusion() -> Iterator[dict[tuple, Any]]:
    """Every variant of the process shares the Stable Diffusion it loaded first (same folder, device, precision):
    its weights are frozen and a variant's wrappers (graphs, compilation) live in its own guidance object."""
    from nerf.guidance import sds

    loaded: dict[tuple, Any] = {}
    load = sds.load_stable_diffusion

    def shared(name: str, device: torch.device, fp16: bool, revision: str | None = None) -> Any:
        key = (name, str(device), fp16, revision)
        if key not in loaded:
            loaded[key] = load(name, device, fp16, revision)
        return loaded[key]

    with common.patched([(sds, "load_stable_diffusion", shared)]):
        yield loaded


def compile_break_even(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """For each `--compile on` variant measured beside its eager twin (the same flags with `--compile off`, else
    without a compile flag: `auto` may compile what an earlier variant cached): the extra warm-up seconds (the
    compilation, cold or from the cache), the saving per iteration, and the iterations after which compiling has
    paid for itself (inf when it saves nothing). `nerf.compilation.AUTO_MIN_ITERS` comes from these."""
    by_flags = {"" if r["variant"] == "default" else " ".join(r["variant"].split()): r for r in rows}
    out = {}
    for flags, row in by_flags.items():
        if "--compile on" not in flags:
            continue
        twin = by_flags.get(" ".join(flags.replace("--compile on", "--compile off").split()),
                            by_flags.get(" ".join(flags.replace("--compile on", "").split())))
        if twin is None:
            continue
        extra_s = row["warmup_s"] - twin["warmup_s"]
        saved_ms = twin["ms_per_iter"] - row["ms_per_iter"]
        out[row["variant"]] = {"extra_warmup_s": extra_s, "saved_ms_per_iter": saved_ms,
                               "break_even_iters": 1000 * extra_s / saved_ms if saved_ms > 0 else math.inf}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import CLIPTextConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = args.model or build_sd15(args.model_dir)
    width = CLIPTextConfig.from_pretrained(model / "text_encoder").hidden_size
    rows = []
    with tempfile.TemporaryDirectory(prefix="realfusion-bench-") as tmp:
        workdir = Path(tmp)
        embeds = learned_embedding(workdir, width)
        with one_stable_diffusion() as loaded:
            for k, variant in enumerate(v.strip() for v in args.variants.split(",") if v.strip()):
                flags = "" if variant == "default" else variant
                trace = args.trace.with_name(f"{k}-{args.trace.name}") if args.trace else None
                rows.append(measure_variant(model, embeds, workdir / f"v{k}", flags, args, trace))
                rows[-1]["variant"] = variant
                row = rows[-1]
                print(f"{variant}: {row['ms_per_iter']:.1f} ms/iteration ({row['back_to_back_ms']:.1f} back to back), "
                      f"warm-up {row['warmup_s']:.1f} s, loading {row['load_s']:.1f} s, {row['sample_rows_k']:.0f}k "
                      "sample rows per iteration", flush=True)
        full = full_run(model, embeds, workdir, args) if args.full else None
    columns = ["variant", "ms_per_iter", "back_to_back_ms", "it_per_s", *(f"{k}_ms" for k in STAGES),
               "sample_rows_k", "peak_GiB", "projected_5000_s", "warmup_s", "load_s"]
    result: dict[str, Any] = {"info": common.device_info(device), "rows": rows, "columns": columns,
                              "settings": {"main_args": args.main_args, "warmup": args.warmup, "steps": args.steps,
                                           "stable_diffusion_loads": len(loaded)}}
    result["compile_break_even"] = compile_break_even(rows)
    for variant, even in result["compile_break_even"].items():
        print(f"{variant}: {even['extra_warmup_s']:.1f} s more warm-up, {even['saved_ms_per_iter']:.2f} ms saved per "
              f"iteration: pays back after {even['break_even_iters']:.0f} iterations")
    if full is not None:
        result["full_run"] = full
        print(report_full(full))
    return result
