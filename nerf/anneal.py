"""Annealed values: a loss weight given as one, two or four entries that may change over training."""

from __future__ import annotations

import math
from typing import Sequence, Union

from nerf.errors import UserError

AnnealSpec = list[Union[float, str]]
FUNCTIONS = ("linear", "log")


class AnnealedValue:
    """``[v]`` constant; ``[start, end]`` linear over training; ``[start, end, end_iters, 'linear'|'log']``
    reaches `end` at `end_iters` (with `legacy_constant_4`, the original's constant min(end_iters / iters, 1))."""

    def __init__(self, spec: AnnealSpec | float, iters: int, legacy_constant_4: bool = False) -> None:
        self.spec = [spec] if isinstance(spec, (int, float)) else list(spec)
        check_anneal_spec("value", self.spec)
        self.iters = iters
        self.legacy_constant_4 = legacy_constant_4

    def value(self, step: int) -> float:
        spec = self.spec
        if len(spec) == 1:
            return float(spec[0])
        start, end = float(spec[0]), float(spec[1])
        if len(spec) == 2:
            frac = min(step / self.iters, 1.0)
            return frac * end + (1 - frac) * start
        end_iters, fn = float(spec[2]), str(spec[3])
        frac = min(end_iters / self.iters if self.legacy_constant_4 else step / end_iters, 1.0)
        if fn == "log":
            return end**frac * start ** (1 - frac)
        return frac * end + (1 - frac) * start

    def ever_nonzero(self) -> bool:
        return float(self.spec[0]) > 0 or (len(self.spec) > 1 and float(self.spec[1]) > 0)


def _number(flag: str, item: float | str) -> float:
    try:
        value = float(item)
    except ValueError:
        raise UserError(f"{flag}: '{item}' is not a number; give numbers, and linear|log only as 4th value.") from None
    if not math.isfinite(value):
        raise UserError(f"{flag}: {item} is not a finite number.")
    return value


def check_anneal_spec(name: str, spec: Sequence[float | str]) -> None:
    """One-line errors for every malformed spec, before any value is converted."""
    flag = f"--{name}"
    if len(spec) not in (1, 2, 4):
        raise UserError(f"{flag} takes 1, 2 or 4 values (value | start end | start end end_iters linear|log), "
                        f"got {len(spec)}.")
    numbers = [_number(flag, item) for item in (spec[:3] if len(spec) == 4 else spec)]
    if len(spec) == 4:
        if str(spec[3]) not in FUNCTIONS:
            raise UserError(f"{flag}: the 4th value must be 'linear' or 'log', got '{spec[3]}'.")
        if numbers[2] <= 0:
            raise UserError(f"{flag}: end_iters (3rd value) must be > 0, got {spec[2]}.")
        if str(spec[3]) == "log" and (numbers[0] <= 0 or numbers[1] <= 0):
            raise UserError(f"{flag}: log annealing needs start and end > 0, got {spec[0]} and {spec[1]}.")


def normalise_anneal_spec(spec: Sequence[float | str]) -> AnnealSpec:
    """Numbers as floats, the function name (4th entry) as a string."""
    if len(spec) == 4:
        return [float(spec[0]), float(spec[1]), float(spec[2]), str(spec[3])]
    return [float(v) for v in spec]
