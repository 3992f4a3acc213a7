"""options.json: the resolved options of a run, as the workspace's record of how it was trained."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from nerf.errors import UserError
from nerf.fileio import write_text_atomic
from nerf.options import GROUPS, Options

TUPLE_FIELDS = ("radius_range", "fovy_range", "zero123_t_range", "legacy")


def to_dict(opt: Options) -> dict:
    """Nested like the dataclass: {"seed": ..., "prior": {...}, "data": {...}, ...}."""
    data = dataclasses.asdict(opt)
    data["legacy"] = list(opt.legacy)
    return data


def save_options(opt: Options, path: str | Path) -> None:
    save_record(to_dict(opt), path)


def save_record(record: dict, path: str | Path) -> None:
    """options.json from options already in their `to_dict` form (the record a checkpoint carries)."""
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def _group_of() -> dict[str, str]:
    """Field name -> its group, to read the flat files written before options were grouped."""
    top = Options()
    return {name: group for group in GROUPS for name in dataclasses.asdict(getattr(top, group))}


def _nest(data: dict) -> dict:
    groups = _group_of()
    nested: dict = {group: dict(data.get(group, {})) for group in GROUPS}
    for key, value in data.items():
        if key in GROUPS:
            continue
        if key in groups:
            nested[groups[key]][key] = value
        else:
            nested[key] = value
    return nested


def options_from_dict(data: dict) -> Options:
    """Rebuild Options from a saved dict (grouped, or flat as older versions wrote it); unknown keys are
    rejected so that a foreign file is noticed."""
    nested = _nest(data)
    nested.pop("backbone", None)  # removed option: it had one value
    top = {f.name for f in dataclasses.fields(Options)}
    unknown = sorted(set(nested) - top)
    for group in GROUPS:
        cls = type(getattr(Options(), group))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown += sorted(set(nested[group]) - names)
        values = {k: tuple(v) if k in TUPLE_FIELDS else v for k, v in nested[group].items() if k in names}
        nested[group] = cls(**values)
    if unknown:
        raise UserError(f"options file has unknown keys {unknown}; it was not written by this version of main.py.")
    if "legacy" in nested:
        nested["legacy"] = tuple(nested["legacy"])
    return Options(**nested)


def load_options(path: str | Path) -> Options:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read options file {path}: {exc}.") from None
    if not isinstance(data, dict):
        raise UserError(f"options file {path} does not hold an object of options.")
    return options_from_dict(data)
