"""Timing and reporting shared by the benchmarks: CUDA-event medians, the card, a table, atomic JSON."""

from __future__ import annotations

import contextlib
import json
import statistics
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

ROOT = Path(__file__).resolve().parents[2]

from nerf.fileio import write_text_atomic


def device_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["card"] = "cpu"
        info["threads"] = torch.get_num_threads()
    return info


def median_ms(fn: Callable[[], Any], device: torch.device, warmup: int = 5, repeats: int = 20) -> float:
    """Median wall time of `fn` in milliseconds: CUDA events on the GPU, perf_counter on the CPU."""
    import time

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            samples.append(1000 * (time.perf_counter() - began))
    return statistics.median(samples)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table; floats with 3 significant decimals."""
    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(Path(path), json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def patched(patches: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Attributes replaced for a block and restored after it."""
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in originals:
            setattr(owner, name, value)
