"""Textual inversion: the real training loop at the README settings, per-step time and where it goes.

    python scripts/benchmark.py ti [--steps 60] [--variant eager=--no_cuda_graph ...]
    python scripts/benchmark.py ti --device cpu --model TINY_SD_DIR --resolution 16 --steps 2 --warmup 1

Calls `nerf.textual_inversion.train.train` (the loop itself, not a copy) on
examples/natural-images/cat/rgba.png (alone in a folder, as the sweep stages it) with the README's command -- batch 1, gradient accumulation 4, 512 px,
--use_augmentations, --scale_lr, constant LR -- plus --mixed_precision fp16 on CUDA, on an SD-1.5-shaped
random-weight model (`sd15.build_sd15`, or --model). The loop's phase hook marks the end of each phase
of a step; on CUDA each mark records a CUDA event (no synchronisation inside the loop), so a phase's
time is how long the GPU's timeline took to get from the previous mark to it: GPU work, or the GPU
waiting on the CPU. The host clock is recorded too (JSON: host_*). The first --warmup steps (graph
capture, cuDNN autotuning, worker start) are not timed. Each --variant adds a row with extra flags.
"""

from __future__ import annotations

import argparse
import gc
import math
import shlex
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nerf.benchmarks.common import ROOT, device_info
from nerf.errors import UserError
from nerf.textual_inversion.args import parse_args
from nerf.textual_inversion.step import PHASES
from nerf.textual_inversion.train import train

PHOTO = ROOT / "examples" / "natural-images" / "cat" / "rgba.png"
PROJECTED_STEPS = 3000  # the README's --max_train_steps


COLUMNS = ["variant", "ms_step", "ms_step_mean", "steps_per_s", "min_3000_steps", *PHASES, "peak_gib",
           "extra_wall_s", "break_even_steps"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", type=Path, default=Path.home() / ".cache" / "realfusion" / "sd15-random",
                        help="where the SD-1.5-shaped random model is built (reused when complete)")
    parser.add_argument("--model", default=None,
                        help="an existing diffusers folder to train with instead (e.g. a tiny model for a CPU smoke run)")
    parser.add_argument("--steps", type=int, default=60, help="timed optimisation steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed optimisation steps before them (at least 1)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    parser.add_argument("--resolution", type=int, default=512, help="training image size (the README's 512)")
    parser.add_argument("--photo", type=Path, default=PHOTO, help="the training photo")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="one more row trained with these extra textual_inversion.py flags")


class PhaseClock:
    """The loop's phase hook: one (phase, host time, CUDA event) record per mark."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[tuple[str, float, Any]] = []

    def __call__(self, phase: str) -> None:
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        self.marks.append((phase, time.perf_counter(), event))

    def steps(self) -> list[dict[str, dict[str, float]]]:
        """Per step: milliseconds by phase ('gpu' from events, 'host' from the clock), each phase timed from
        the mark before it; a step ends with its "logging" mark. The first step has no start and is left out."""
        if self.cuda:
            torch.cuda.synchronize()
        steps, current = [], None
        for (_, host0, event0), (phase, host1, event1) in zip(self.marks, self.marks[1:]):
            if current is None:
                current = {"gpu": {}, "host": {}}
            gpu = event0.elapsed_time(event1) if self.cuda else 1000 * (host1 - host0)
            current["gpu"][phase] = current["gpu"].get(phase, 0.0) + gpu
            current["host"][phase] = current["host"].get(phase, 0.0) + 1000 * (host1 - host0)
            if phase == "logging":
                steps.append(current)
                current = None
        # marks before the first "logging" belong to step one, whose start was not marked
        return steps[1:]


def readme_flags(data: Path, output_dir: Path, steps: int, resolution: int, cuda: bool) -> list[str]:
    """The README's textual-inversion command for `steps` steps, saving nothing on the way."""
    return ["--train_data_dir", str(data), "--learnable_property", "object", "--placeholder_token", "_cat_statue_",
            "--initializer_token", "cat", "--resolution", str(resolution), "--train_batch_size", "1",
            "--gradient_accumulation_steps", "4", "--max_train_steps", str(steps), "--learning_rate", "5.0e-04",
            "--scale_lr", "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--output_dir", str(output_dir),
            "--use_augmentations", "--only_save_embeds", "--save_steps", str(steps + 1),
            "--checkpointing_steps", str(steps + 1), "--seed", "0",
            "--mixed_precision", "fp16" if cuda else "no"]


def parse_variants(specs: list[str]) -> list[tuple[str, list[str]]]:
    variants = [("default", [])]
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name:
            raise UserError(f"--variant {spec!r} is not NAME=FLAGS; e.g. --variant eager=--no_cuda_graph.")
        variants.append((name, shlex.split(flags)))
    return variants


def measure(name: str, flags: list[str], model: str, args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """Train one variant and summarise its timed steps."""
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    clock = PhaseClock(cuda)
    with tempfile.TemporaryDirectory(prefix="ti-benchmark-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        shutil.copyfile(args.photo, data / args.photo.name)
        argv = ["--pretrained_model_name_or_path", model,
                *readme_flags(data, Path(tmp) / "out", args.warmup + args.steps, args.resolution, cuda), *flags]
        began = time.perf_counter()
        train(parse_args(argv), on_phase=clock)
        wall = time.perf_counter() - began
    timed = clock.steps()[args.warmup - 1:]  # steps() starts at step 2
    totals = [sum(step["gpu"].values()) for step in timed]
    mean = statistics.fmean(totals)
    row: dict[str, Any] = {
        "variant": name, "flags": " ".join(flags), "timed_steps": len(timed),
        "ms_step": statistics.median(totals), "ms_step_mean": mean, "steps_per_s": 1000 / mean,
        "min_3000_steps": PROJECTED_STEPS * mean / 60000, "run_wall_s": wall,
    }
    for phase in PHASES:
        row[phase] = statistics.median(step["gpu"].get(phase, 0.0) for step in timed)
        row[f"host_{phase}"] = statistics.median(step["host"].get(phase, 0.0) for step in timed)
    if cuda:
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    else:
        row["peak_gib"] = "-"
    return row


def add_break_even(rows: list[dict[str, Any]]) -> None:
    """Each variant against the default row (same steps): its extra run time (loading, capture, compilation) and
    the steps after which its saving per step pays that back (inf if it saves nothing)."""
    base = rows[0]
    for row in rows[1:]:
        extra_s = row["run_wall_s"] - base["run_wall_s"]
        saved_ms = base["ms_step_mean"] - row["ms_step_mean"]
        row["extra_wall_s"] = extra_s
        row["break_even_steps"] = max(0.0, 1000 * extra_s / saved_ms) if saved_ms > 0 else math.inf


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.steps < 1 or args.warmup < 1:
        raise UserError("--steps and --warmup must be at least 1 (a step is timed from the end of the one before).")
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if cuda and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; use --device cpu with a tiny --model.")
    if not cuda and torch.cuda.is_available():
        raise UserError("textual inversion uses the GPU whenever one is visible; for a CPU run set "
                        "CUDA_VISIBLE_DEVICES= (empty).")
    if not args.photo.is_file():
        raise UserError(f"--photo {args.photo} does not exist; give an image file.")
    if args.model is None:
        from nerf.benchmarks.sd15 import build_sd15

        print(f"building the SD-1.5-shaped random model in {args.model_dir} (once)")
        model = str(build_sd15(args.model_dir))
    else:
        model = args.model
    rows = [measure(name, flags, model, args, cuda) for name, flags in parse_variants(args.variant)]
    add_break_even(rows)
    settings = {"model": model, "photo": str(args.photo), "warmup": args.warmup, "steps": args.steps,
                "flags": readme_flags(Path("DATA"), Path("OUT"), args.warmup + args.steps, args.resolution, cuda)}
    device = torch.device("cuda" if cuda else "cpu")
    return {"info": device_info(device), "settings": settings, "rows": rows, "columns": COLUMNS}
