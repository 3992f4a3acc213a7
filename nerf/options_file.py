"""options.json: the resolved options of a run, as the workspace's record of how it was trained."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

from nerf.errors import UserError
from nerf.fileio import write_text_atomic
from nerf.options import GROUPS, Options

TUPLE_FIELDS = ("radius_range", "fovy_range", "t_range", "zero123_t_range", "legacy")


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


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value is one of the annotated type (lists stand for tuples; ints are floats too)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple):
        if not isinstance(value, list):
            return False
        if origin is tuple and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return all(_fits(item, args[0]) for item in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)  # type: ignore[arg-type]  # bool, str, None


def _check_types(cls: type, values: dict, source: str) -> None:
    """A value of the wrong type would fail far from here, with a traceback: refuse it by name."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints and not dataclasses.is_dataclass(hints[name]) and not _fits(value, hints[name]):
            raise UserError(f"{source} has {name} = {json.dumps(value)}, which is not a valid value of that option; "
                            f"it was not written by main.py, or was edited: restore it or train a new workspace.")


def options_from_dict(data: dict, source: str = "options file") -> Options:
    """Rebuild Options from a saved dict (grouped, or flat as older versions wrote it); unknown keys and values of
    the wrong type are rejected so that a foreign or edited file is noticed."""
    nested = _nest(data)
    nested.pop("backbone", None)  # removed option: it had one value
    top = {f.name for f in dataclasses.fields(Options)}
    unknown = sorted(set(nested) - top)
    _check_types(Options, {k: v for k, v in nested.items() if k not in GROUPS}, source)
    for group in GROUPS:
        cls = type(getattr(Options(), group))
        if not isinstance(nested[group], dict):
            raise UserError(f"{source} has {group} = {json.dumps(nested[group])}, not a group of options; it was not "
                            f"written by main.py, or was edited: restore it or train a new workspace.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown += sorted(set(nested[group]) - names)
        _check_types(cls, nested[group], source)
        values = {k: tuple(v) if k in TUPLE_FIELDS else v for k, v in nested[group].items() if k in names}
        nested[group] = cls(**values)
    if unknown:
        raise UserError(f"{source} has unknown keys {unknown}; it was not written by this version of main.py.")
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
    return options_from_dict(data, f"options file {path}")
