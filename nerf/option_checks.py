"""From the command line to resolved options: parse, apply presets, reject what would fail later.

Everything here runs before a model is loaded or a file is written, so a bad value costs nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import sys
from typing import Sequence

from nerf.anneal import AnnealedValue, check_anneal_spec, normalise_anneal_spec
from nerf.errors import UserError
from nerf.guidance import check_guidance_name, prior_weights
from nerf.options import ANNEALED_FIELDS, GROUPS, Options

CKPT_NAMES = ("scratch", "latest", "latest_model", "best")
MESH_RESOLUTION_CAP = 256  # the original's mesh resolution


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _check_finite(opt: Options) -> None:
    """NaN or infinite numbers would silently switch terms off or poison the weights."""
    for group in GROUPS:
        for name, value in dataclasses.asdict(getattr(opt, group)).items():
            values = value if isinstance(value, (tuple, list)) else [value]
            for item in values:
                if isinstance(item, float) and not math.isfinite(item):
                    raise UserError(f"--{name} must be a finite number, got {value}.")


def _check_sizes(opt: Options) -> None:
    positive = {"train": ("iters", "eval_interval", "max_bad_steps"),
                "data": ("HW_synthetic", "HW_real", "num_rays"),
                "render": ("max_steps", "update_extra_interval", "occupancy_grid_size", "max_ray_batch"),
                "field": ("grid_levels",), "objective": ("real_every",), "output": ("HW_vis", "mesh_resolution")}
    non_negative = {"objective": ("albedo_iters", "real_iters", "replace_synthetic_camera_every"),
                    "field": ("grid_levels_mask_iters",), "output": ("mesh_decimate_target",),
                    "train": ("warm_iters",)}
    for group, names in positive.items():
        for name in names:
            value = getattr(getattr(opt, group), name)
            _check(value > 0, f"--{name} must be > 0, got {value}.")
    for group, names in non_negative.items():
        for name in names:
            value = getattr(getattr(opt, group), name)
            _check(value >= 0, f"--{name} must be >= 0, got {value}.")
    size = opt.render.occupancy_grid_size
    _check(size & (size - 1) == 0, f"--occupancy_grid_size must be a power of two (cells are indexed by Morton "
                                   f"codes), e.g. 32, 64 or 128; got {size}.")


def _check_cameras(opt: Options) -> None:
    data = opt.data
    lo, hi = data.radius_range
    _check(0 < lo <= hi, f"--radius_range needs 0 < min <= max, got {lo} {hi} (reversed or non-positive range).")
    lo, hi = data.fovy_range
    _check(0 < lo <= hi < 180, f"--fovy_range needs 0 < min <= max < 180 degrees, got {lo} {hi}.")
    _check(data.radius_rot is None or data.radius_rot > 0, f"--radius_rot must be > 0, got {data.radius_rot}.")
    _check(0 <= data.uniform_sphere_rate <= 1,
           f"--uniform_sphere_rate must be in [0, 1], got {data.uniform_sphere_rate}.")
    _check(0 < data.angle_front <= 180, f"--angle_front must be in (0, 180], got {data.angle_front}.")
    _check(0 <= data.angle_overhead < 90, f"--angle_overhead must be in [0, 90), got {data.angle_overhead}.")


def _check_model(opt: Options) -> None:
    field, render, train = opt.field, opt.render, opt.train
    _check(render.bound > 0, f"--bound must be > 0, got {render.bound}.")
    _check(0 <= field.grid_levels_mask < field.grid_levels or field.grid_levels_mask == 0,
           f"--grid_levels_mask must be in [0, grid_levels), got {field.grid_levels_mask}.")
    _check(field.grid_resolution * render.bound > 16, "--grid_resolution * --bound must exceed the base resolution "
                                                      f"16, got {field.grid_resolution * render.bound}.")
    _check(0 < train.ema_decay < 1, f"--ema_decay must be in (0, 1), got {train.ema_decay}.")
    _check(train.lr > 0 and train.min_lr >= 0,
           f"--lr must be > 0 and --min_lr >= 0, got {train.lr} and {train.min_lr}.")
    _check(render.dt_gamma >= 0 and render.min_near >= 0, "--dt_gamma and --min_near must be >= 0.")
    _check(opt.prior.guidance_scale >= 0, f"--guidance_scale must be >= 0, got {opt.prior.guidance_scale}.")
    _check_t_range("--t_range", opt.prior.t_range)
    _check(opt.output.mesh_threshold is None or opt.output.mesh_threshold > 0, "--mesh_threshold must be > 0.")


def _check_t_range(flag: str, t_range: tuple[float, float]) -> None:
    lo, hi = t_range
    _check(0 <= lo < hi <= 1, f"{flag} needs 0 <= min < max <= 1 (fractions of the training steps), got {lo} {hi}.")


def _check_zero123(opt: Options) -> None:
    """Zero-1-to-3's settings, when the prior uses it."""
    prior = opt.prior
    if "zero123" not in prior.guidance.split("+"):
        return
    _check(bool(prior.zero123_model), f"--guidance {prior.guidance} needs --zero123_model: a hub id (e.g. "
                                      "kxic/zero123-xl) or a local Zero-1-to-3 folder in its diffusers layout.")
    _check_t_range("--zero123_t_range", prior.zero123_t_range)
    _check(prior.zero123_guidance_scale >= 0,
           f"--zero123_guidance_scale must be >= 0, got {prior.zero123_guidance_scale}.")
    _check(not opt.uses("left_handed"), "--legacy left_handed mirrors every render, which Zero-1-to-3's camera "
                                        f"conditioning does not expect; drop it with --guidance {prior.guidance}.")


def validate(opt: Options) -> None:
    """Reject values that would fail later or silently do nothing; one-line messages naming the flag."""
    for name in ANNEALED_FIELDS:
        check_anneal_spec(name, getattr(opt.objective, name))
        weights = getattr(opt.objective, name)[:2]  # value, or start and end
        _check(all(float(w) >= 0 for w in weights), f"--{name} is a loss weight and must be >= 0, got "
                                                     f"{' '.join(map(str, weights))} (0 switches the term off).")
    _check_finite(opt)
    _check_sizes(opt)
    _check_cameras(opt)
    _check_model(opt)
    _check(0 <= opt.seed < 2**32, f"--seed must be in [0, 2^32), got {opt.seed} (NumPy's generator takes 32 bits).")
    _check(opt.workspace != "", "--workspace is empty; give a folder (a new one, or a run's workspace to resume), "
                                "or leave it out for one under outputs/.")
    _check(not opt.workspace or not os.path.exists(opt.workspace) or os.path.isdir(opt.workspace),
           f"--workspace {opt.workspace} is a file; give a folder (a new one, or a run's workspace to resume).")
    _check(opt.ckpt in CKPT_NAMES or opt.ckpt.endswith((".pth", ".pt")),
           f"--ckpt must be scratch, latest, latest_model, best or a .pth file, got '{opt.ckpt}'.")
    objective = opt.objective
    check_guidance_name(opt.prior.guidance)
    weights = prior_weights(opt.prior.guidance)
    prior_off = not any(AnnealedValue(getattr(objective, f"lambda_{weight}"), opt.train.iters).ever_nonzero()
                        for weight in weights)
    _check(not (prior_off and (objective.real_iters > 0 or objective.real_every > 1)),
           f"{' and '.join(f'--lambda_{weight}' for weight in weights)} 0 with --real_iters > 0 or --real_every > 1 "
           "leaves iterations with no loss at all; drop one of them.")
    _check(not (opt.O and opt.O2), "--O and --O2 are alternative presets; give only one.")
    _check_zero123(opt)
    _check(opt.prior.guidance != "oracle" or opt.prior.guidance_scene is not None,
           "--guidance oracle needs --guidance_scene FAMILY[:SEED] or a scene folder from make-synthetic-scene.py.")


def resolve(opt: Options) -> Options:
    """Apply presets and derived settings, normalise anneal specs, validate. Returns a new object."""
    for name in ANNEALED_FIELDS:  # checked first: normalising converts to float
        check_anneal_spec(name, getattr(opt.objective, name))
    objective = {name: normalise_anneal_spec(getattr(opt.objective, name)) for name in ANNEALED_FIELDS}
    prior, render, train, output = {}, {}, {}, {}
    if opt.O:
        train["fp16"], prior["dir_text"], render["cuda_ray"] = True, True, True
    elif opt.O2:
        train["fp16"], prior["dir_text"], render["cuda_ray"] = opt.objective.albedo, True, False
    if opt.objective.albedo:
        objective["albedo_iters"] = opt.train.iters
    if opt.debug:
        output["wandb"] = False  # as the original: debugging runs are not logged
    if opt.train.lr_warmup is None:
        train["lr_warmup"] = False
    if opt.output.mesh_resolution is None:  # the mesh follows the run's size (see OutputOptions.mesh_resolution)
        output["mesh_resolution"] = min(MESH_RESOLUTION_CAP, 2 * opt.render.occupancy_grid_size)
    resolved = dataclasses.replace(
        opt, workspace=None if opt.debug else opt.workspace, legacy=tuple(dict.fromkeys(opt.legacy)),
        prior=dataclasses.replace(opt.prior, **prior), render=dataclasses.replace(opt.render, **render),
        train=dataclasses.replace(opt.train, **train), objective=dataclasses.replace(opt.objective, **objective),
        output=dataclasses.replace(opt.output, **output))
    validate(resolved)
    return resolved


def parse(args: Sequence[str] | None = None) -> Options:
    """Parse the command line with tyro (flat underscored flags, grouped help) and resolve presets.

    tyro reports a bad command line in a framed box; it becomes one UserError line here, with tyro's suggestion
    of the nearest flag (--help still prints the full help and exits 0)."""
    import tyro

    report = io.StringIO()
    try:
        with contextlib.redirect_stderr(report):
            opt = tyro.cli(Options, args=args, use_underscores=True, description=Options.__doc__,
                           config=(tyro.conf.OmitArgPrefixes,))
    except SystemExit as exc:
        if exc.code in (0, None):
            sys.stderr.write(report.getvalue())
            raise
        raise UserError(one_line_parse_error(report.getvalue())) from None
    sys.stderr.write(report.getvalue())  # tyro's warnings, if any
    return resolve(opt)


def one_line_parse_error(box: str) -> str:
    """tyro's framed error report as one line: its message, then 'did you mean' with the flags it suggests."""
    sections: list[list[str]] = [[]]
    for line in box.splitlines():
        inner = line.strip()
        if not inner or inner[0] in "╭╰":
            continue
        inner = inner.strip("│").strip()
        if inner and set(inner) <= {"─", " "}:  # a rule between sections
            sections.append([])
        elif inner:
            sections[-1].append(inner)
    message = " ".join(sections[0]) or "the command line could not be parsed"
    for section in sections[1:]:
        if section and section[0].lower().startswith("perhaps you meant"):
            flags = list(dict.fromkeys(item.split()[0] for item in section[1:] if item.startswith("-")))
            if flags:
                message += f"; did you mean {' or '.join(flags[:3])}?"
    return f"{message.rstrip('.')} (--help lists every option)."
