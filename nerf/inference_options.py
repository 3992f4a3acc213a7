"""Options of an inference run (--test, --mesh_only) on a trained workspace.

The workspace's options.json is the record of how it was trained: inference reads it and takes from the command
line only what inference may change (output sizes and names, the mesh, the checkpoint, the renderer's chunking
and backend), keeping the workspace's value of those where the command line leaves them at their default. A training option given with another value than the workspace's is an error that names it; the
record itself is never rewritten.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nerf.errors import UserError
from nerf.option_checks import resolve
from nerf.options import GROUPS, Options
from nerf.options_file import load_options

TOP_LEVEL = ("test", "mesh_only", "workspace", "ckpt", "debug", "run_name", "force_unlock")
PER_GROUP = {"output": None, "render": ("max_ray_batch", "cuda_ray")}  # None: the whole group


def _inference_fields(group: str) -> tuple[str, ...]:
    fields = tuple(f.name for f in dataclasses.fields(type(getattr(Options(), group))))
    allowed = PER_GROUP.get(group, ())
    return fields if allowed is None else tuple(name for name in fields if name in allowed)


def _conflicts(given: Options, saved: Options, defaults: Options) -> list[str]:
    """Training options set on the command line (not at their default) to another value than the workspace's."""
    found = []
    for f in dataclasses.fields(Options):
        if f.name in GROUPS:
            allowed = _inference_fields(f.name)
            for name in (g.name for g in dataclasses.fields(type(getattr(given, f.name)))):
                if name in allowed:
                    continue
                value, was, default = (getattr(getattr(o, f.name), name) for o in (given, saved, defaults))
                if value != default and value != was:
                    found.append(f"--{name} {value} (trained with {was})")
        elif f.name not in TOP_LEVEL:
            value, was, default = (getattr(o, f.name) for o in (given, saved, defaults))
            if value != default and value != was:
                found.append(f"--{f.name} {value} (trained with {was})")
    return found


def inference_options(given: Options, defaults: Options | None = None) -> Options:
    """The workspace's training options with the inference options of `given` (the parsed command line)."""
    if not given.workspace:
        raise UserError("--test and --mesh_only need --workspace, the folder of a trained run.")
    record = Path(given.workspace) / "options.json"
    if not record.is_file():
        raise UserError(f"--test needs a trained workspace; {given.workspace} has no options.json (give the "
                        "--workspace of a main.py run).")
    saved = load_options(record)
    defaults = defaults or resolve(Options())
    conflicts = _conflicts(given, saved, defaults)
    if conflicts:
        raise UserError(f"{conflicts[0]} differs from the options {record} records; inference uses the training "
                        "options of the workspace: drop the flag, or train a new workspace with it.")
    groups = {group: dataclasses.replace(getattr(saved, group), **{
        name: _chosen(getattr(getattr(given, group), name), getattr(getattr(saved, group), name),
                      getattr(getattr(defaults, group), name)) for name in _inference_fields(group)})
              for group in GROUPS}
    return dataclasses.replace(saved, **{name: getattr(given, name) for name in TOP_LEVEL}, **groups)


def _chosen(given: object, saved: object, default: object) -> object:
    """An inference option: the command line's when it was set there (not at its default), else the workspace's
    (so that --test renders at the sizes the run was trained to show)."""
    return given if given != default else saved
