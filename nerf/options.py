"""Every command-line option of the reconstruction stage, in one dataclass.

Names, types, defaults and meanings follow the original RealFusion options (underscored flags such as
``--image_path`` and the ``--O``/``--O2`` presets). Where the original had a bug the fixed behaviour is the
default and the original's behaviour stays available through ``--legacy NAME`` (see README, "Differences from
the original"). Presets and validation run in :func:`resolve`, right after parsing, so an invalid combination
fails before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

from nerf.errors import UserError
from nerf.fileio import write_text_atomic

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_IMAGE = "examples/natural-images/cat/rgba.png"

AnnealSpec = list[Union[float, str]]
"""``[v]`` constant; ``[start, end]`` linear over training; ``[start, end, end_iters, 'linear'|'log']``."""

LegacyBehaviour = Literal[
    "camera_replacement",  # known issue 1: random camera rendered, front prompt on 9 of 10 steps
    "anneal_4",  # known issue 2: 4-entry anneal is constant at min(end_iters / iters, 1)
    "sds_unscaled",  # known issue 12: SDS gradient bypasses the fp16 loss scaler
    "live_weights_final_video",  # known issue 13: the video after training uses live, not EMA, weights
    "empty_grid_start",  # known issue 14: occupancy grid empty until the first update at step 16
    "left_handed",  # the original's mirrored look-at frame
]


def _anneal(values: Sequence[float]) -> AnnealSpec:
    return dataclasses.field(default_factory=lambda: list(values))


@dataclasses.dataclass
class Options:
    """RealFusion reconstruction: fit a NeRF to one RGBA image with a Stable Diffusion prior."""

    # --- presets and run modes ---
    O: bool = False
    """Recommended preset: fp16, view-dependent prompts, CUDA ray marching (with a PyTorch fallback)."""
    O2: bool = False
    """Preset for machines without the CUDA extensions: fp16 only with --albedo, view-dependent prompts,
    pure-PyTorch ray marching."""
    test: bool = False
    """Test mode: render the 360-degree videos from the latest checkpoint, no training."""
    seed: int = 101
    run_name: str = "default"
    """Automatic workspaces are outputs/{run_name}/{date}--seed-{seed}."""
    workspace: Optional[str] = None
    """Output folder; a run on an existing workspace resumes from its latest checkpoint."""

    # --- prompt and diffusion model ---
    text: str = "A high-resolution DSLR image of a <token>"
    """Prompt; <token> is replaced by the learned token."""
    negative: str = ""
    """Negative prompt (the unconditional branch of classifier-free guidance)."""
    pretrained_model_name_or_path: str = DEFAULT_MODEL
    """Stable Diffusion: a hub id, a local diffusers folder, or a single .safetensors/.ckpt file."""
    pretrained_model_image_size: int = 512
    """Accepted for compatibility; score distillation works at the model's native resolution (512 for SD v1.5)."""
    learned_embeds_path: Optional[str] = None
    """learned_embeds.bin / .safetensors (or a textual-inversion output folder). Without it, <token> becomes the
    word in token_autoinit.txt next to the image."""
    guidance_scale: float = 100.0
    image_path: str = DEFAULT_IMAGE
    """The square RGBA input image; alpha is the object mask."""

    # --- cameras ---
    uniform_sphere_rate: float = 0.5
    """Probability of sampling a training camera direction on the upper hemisphere instead of in (theta, phi)."""
    bound: float = 0.75
    """The scene is the cube [-bound, bound]^3."""
    dt_gamma: float = 0.0
    """Adaptive ray-marching step: dt = clamp(t * dt_gamma, dt_min, dt_max); 0 gives a constant step."""
    min_near: float = 0.1
    """Nearest distance along a ray that is rendered."""
    radius_range: tuple[float, float] = (1.0, 1.5)
    """Camera distance range of random training views."""
    radius_rot: Optional[float] = 1.8
    """Distance of the input camera and of the circular validation/test path (default 1.2 * max radius_range)."""
    fovy_range: tuple[float, float] = (40.0, 70.0)
    """Vertical field-of-view range (degrees) of training views; fixed views use its mean."""
    dir_text: bool = True
    """View-dependent prompts (front / side / back / overhead / bottom)."""
    suppress_face: Optional[str] = None
    """Appended to the negative prompt of every view except the front one."""
    angle_overhead: float = 30.0
    angle_front: float = 60.0
    pose_angle: float = 75.0
    """Polar angle (degrees down from the vertical) of the input camera and of the circular path."""
    jitter_pose: bool = False

    # --- training schedule ---
    ckpt: str = "latest"
    """scratch | latest | latest_model | best | a checkpoint path."""
    eval_interval: int = 5
    """Validate and save a checkpoint every this many epochs (one epoch = 100 iterations)."""
    iters: int = 5000
    lr_warmup: Optional[bool] = None
    """Linear warm-up then cosine decay of the learning rate (off by default, as the original effectively ran)."""
    lr: float = 1e-3
    min_lr: float = 1e-6
    warm_iters: int = 2000

    # --- rendering ---
    cuda_ray: bool = True
    """Use the CUDA extensions when they can be loaded (the PyTorch reference otherwise)."""
    max_steps: int = 512
    """Maximum samples per ray; also sets the marching step 2*sqrt(3)/max_steps."""
    num_steps: int = 64
    """Accepted for compatibility; every renderer here marches through the occupancy grid."""
    upsample_steps: int = 32
    """Accepted for compatibility; every renderer here marches through the occupancy grid."""
    update_extra_interval: int = 16
    """Update the occupancy grid every this many iterations."""
    occupancy_grid_size: int = 128
    """Cells per axis of the occupancy grid (smaller grids make CPU runs faster)."""
    max_ray_batch: int = 4096
    """Rays rendered per chunk in validation and test renders with the PyTorch marcher (the CUDA marcher
    renders whole frames)."""
    albedo: bool = False
    """Albedo shading for the whole run (sets albedo_iters = iters)."""
    albedo_iters: int = 1000
    num_rays: int = 4096
    """Random pixels of the input view per iteration."""
    HW_synthetic: int = 96
    HW_real: int = 128
    HW_vis: int = 128

    # --- field ---
    backbone: Literal["grid"] = "grid"
    bg_radius: float = 1.4
    """> 0: a background network colours rays during training."""
    density_thresh: float = 10.0
    blob_density: float = 5.0
    blob_radius: float = 0.2
    grid_levels: int = 16
    grid_resolution: int = 2048
    """The finest grid level has resolution grid_resolution * bound."""
    grid_type: Literal["tiled", "hash"] = "tiled"
    """tiled: the original's grid (fine levels share one xy table along z); hash: instant-NGP hashing."""
    log2_hashmap_size: int = 16
    grid_levels_mask: int = 8
    """Number of finest grid levels disabled early in training (0: none)."""
    grid_levels_mask_iters: int = 3000

    # --- optimisation ---
    optim: Literal["adan", "adam", "adamw"] = "adam"
    fp16: bool = False
    cuda_graph: bool = True
    """On CUDA, replay Stable Diffusion's UNet call and VAE encoder as CUDA graphs (same maths, several times
    faster); falls back to eager execution with a warning if capture fails."""
    ema_decay: float = 0.95
    lambda_prior: AnnealSpec = _anneal([1.0])
    lambda_image: AnnealSpec = _anneal([5.0])
    lambda_mask: AnnealSpec = _anneal([0.5])
    lambda_entropy: AnnealSpec = _anneal([1e-4])
    lambda_opacity: AnnealSpec = _anneal([0.0])
    lambda_orient: AnnealSpec = _anneal([1e-2])
    lambda_smooth: AnnealSpec = _anneal([0.0])
    lambda_smooth_2d: AnnealSpec = _anneal([0.5])
    real_iters: int = 0
    """Input-view losses start at this iteration."""
    real_every: int = 1
    """Input-view losses every this many iterations."""
    replace_synthetic_camera_every: int = 10
    """Every N-th prior step renders the input camera (with the front prompt); 0 disables."""
    replace_synthetic_camera_noise: float = 0.02
    noise_real_camera: float = 0.001
    noise_real_camera_annealing: bool = True
    max_bad_steps: int = 20
    """Stop after this many consecutive iterations with a non-finite loss (those steps are skipped)."""

    # --- outputs ---
    save_mesh: bool = False
    """Export a textured mesh (obj + mtl + png, glb) at the end."""
    mesh_resolution: int = 256
    mesh_threshold: Optional[float] = None
    """Density iso-level of the mesh (default: the occupancy threshold min(mean density, density_thresh))."""
    mesh_decimate_target: int = 50_000
    """Target face count of the exported mesh (0 keeps every face)."""
    save_test_name: str = "df_test"
    test_on_real_data: bool = False
    """Test mode renders the circular path at the input resolution (8 views, PNG frames)."""
    wandb: bool = False
    debug: bool = False
    """Automatic workspace name, no wandb, training renders every 50 iterations."""
    legacy: tuple[LegacyBehaviour, ...] = ()
    """Reproduce a fixed behaviour of the original (see README, "Differences from the original")."""

    # ------------------------------------------------------------------
    @property
    def max_epoch(self) -> int:
        return math.ceil(self.iters / ITERS_PER_EPOCH)

    @property
    def orbit_radius(self) -> float:
        return self.radius_rot if self.radius_rot else 1.2 * self.radius_range[1]

    @property
    def default_fovy(self) -> float:
        return (self.fovy_range[0] + self.fovy_range[1]) / 2

    def uses(self, behaviour: LegacyBehaviour) -> bool:
        return behaviour in self.legacy


ITERS_PER_EPOCH = 100
ANNEALED_FIELDS = tuple(f.name for f in dataclasses.fields(Options) if f.name.startswith("lambda_"))


class AnnealedValue:
    """A loss weight that may change over training (see :data:`AnnealSpec`)."""

    def __init__(self, spec: AnnealSpec | float, iters: int, legacy_constant_4: bool = False) -> None:
        self.spec = [spec] if isinstance(spec, (int, float)) else list(spec)
        self.iters = iters
        self.legacy_constant_4 = legacy_constant_4
        check_anneal_spec("value", self.spec)

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


def check_anneal_spec(name: str, spec: Sequence[float | str]) -> None:
    flag = f"--{name}"
    if len(spec) not in (1, 2, 4):
        raise UserError(f"{flag} takes 1, 2 or 4 values (value | start end | start end end_iters linear|log), got {len(spec)}.")
    numbers = spec[:3] if len(spec) == 4 else spec
    for item in numbers:
        if isinstance(item, str):
            try:
                float(item)
            except ValueError:
                raise UserError(f"{flag}: '{item}' is not a number; give numbers, and linear|log only as 4th value.") from None
    if len(spec) == 4:
        if str(spec[3]) not in ("linear", "log"):
            raise UserError(f"{flag}: the 4th value must be 'linear' or 'log', got '{spec[3]}'.")
        if float(spec[2]) <= 0:
            raise UserError(f"{flag}: end_iters (3rd value) must be > 0, got {spec[2]}.")
        if str(spec[3]) == "log" and (float(spec[0]) <= 0 or float(spec[1]) <= 0):
            raise UserError(f"{flag}: log annealing needs start and end > 0, got {spec[0]} and {spec[1]}.")


def _normalise_anneal(spec: Sequence[float | str]) -> AnnealSpec:
    """Numbers as floats, the function name (4th entry) as a string."""
    if len(spec) == 4:
        return [float(spec[0]), float(spec[1]), float(spec[2]), str(spec[3])]
    return [float(v) for v in spec]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def validate(opt: Options) -> None:
    """Reject values that would fail later or silently do nothing; one-line messages naming the flag."""
    _check(opt.iters > 0, f"--iters must be > 0, got {opt.iters}.")
    for name in ("eval_interval", "HW_synthetic", "HW_real", "HW_vis", "num_rays", "max_steps",
                 "update_extra_interval", "occupancy_grid_size", "max_ray_batch", "grid_levels", "real_every", "mesh_resolution",
                 "max_bad_steps"):
        value = getattr(opt, name)
        _check(value > 0, f"--{name} must be > 0, got {value}.")
    for name in ("albedo_iters", "real_iters", "grid_levels_mask_iters", "replace_synthetic_camera_every",
                 "mesh_decimate_target", "warm_iters"):
        value = getattr(opt, name)
        _check(value >= 0, f"--{name} must be >= 0, got {value}.")
    size = opt.occupancy_grid_size
    _check(size & (size - 1) == 0, f"--occupancy_grid_size must be a power of two (cells are indexed by Morton "
                                   f"codes), e.g. 32, 64 or 128; got {size}.")
    _check(opt.bound > 0, f"--bound must be > 0, got {opt.bound}.")
    lo, hi = opt.radius_range
    _check(0 < lo <= hi, f"--radius_range needs 0 < min <= max, got {lo} {hi} (reversed or non-positive range).")
    lo, hi = opt.fovy_range
    _check(0 < lo <= hi < 180, f"--fovy_range needs 0 < min <= max < 180 degrees, got {lo} {hi}.")
    _check(opt.radius_rot is None or opt.radius_rot > 0, f"--radius_rot must be > 0, got {opt.radius_rot}.")
    _check(0 <= opt.uniform_sphere_rate <= 1, f"--uniform_sphere_rate must be in [0, 1], got {opt.uniform_sphere_rate}.")
    _check(0 < opt.angle_front <= 180, f"--angle_front must be in (0, 180], got {opt.angle_front}.")
    _check(0 <= opt.angle_overhead < 90, f"--angle_overhead must be in [0, 90), got {opt.angle_overhead}.")
    _check(0 <= opt.grid_levels_mask < opt.grid_levels or opt.grid_levels_mask == 0,
           f"--grid_levels_mask must be in [0, grid_levels), got {opt.grid_levels_mask}.")
    _check(opt.grid_resolution * opt.bound > 16,
           f"--grid_resolution * --bound must exceed the base resolution 16, got {opt.grid_resolution * opt.bound}.")
    _check(0 < opt.ema_decay < 1, f"--ema_decay must be in (0, 1), got {opt.ema_decay}.")
    _check(opt.lr > 0 and opt.min_lr >= 0, f"--lr must be > 0 and --min_lr >= 0, got {opt.lr} and {opt.min_lr}.")
    _check(opt.dt_gamma >= 0 and opt.min_near >= 0, "--dt_gamma and --min_near must be >= 0.")
    _check(opt.guidance_scale >= 0, f"--guidance_scale must be >= 0, got {opt.guidance_scale}.")
    _check(opt.ckpt in ("scratch", "latest", "latest_model", "best") or opt.ckpt.endswith((".pth", ".pt")),
           f"--ckpt must be scratch, latest, latest_model, best or a .pth file, got '{opt.ckpt}'.")
    _check(opt.mesh_threshold is None or opt.mesh_threshold > 0, "--mesh_threshold must be > 0.")
    for name in ANNEALED_FIELDS:
        check_anneal_spec(name, getattr(opt, name))
    prior_off = not AnnealedValue(opt.lambda_prior, opt.iters).ever_nonzero()
    _check(not (prior_off and (opt.real_iters > 0 or opt.real_every > 1)),
           "--lambda_prior 0 with --real_iters > 0 or --real_every > 1 leaves iterations with no loss at all; "
           "drop one of them.")
    _check(not (opt.O and opt.O2), "--O and --O2 are alternative presets; give only one.")


def resolve(opt: Options) -> Options:
    """Apply presets and derived settings, normalise anneal specs, validate. Returns a new object."""
    changes: dict = {name: _normalise_anneal(getattr(opt, name)) for name in ANNEALED_FIELDS}
    if opt.O:
        changes.update(fp16=True, dir_text=True, cuda_ray=True)
    elif opt.O2:
        changes.update(fp16=opt.albedo, dir_text=True, cuda_ray=False)
    if opt.albedo:
        changes["albedo_iters"] = opt.iters
    if opt.lr_warmup is None:
        changes["lr_warmup"] = False
    if opt.debug:
        changes.update(wandb=False, workspace=None)
    changes["legacy"] = tuple(dict.fromkeys(opt.legacy))
    resolved = dataclasses.replace(opt, **changes)
    validate(resolved)
    return resolved


def default_workspace(opt: Options, now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now()
    return str(Path("outputs") / opt.run_name / f"{now:%Y-%m-%d--%H-%M-%S}--seed-{opt.seed}")


def parse(args: Sequence[str] | None = None) -> Options:
    """Parse the command line with tyro (underscored flags) and resolve presets; UserError on invalid values."""
    import tyro

    opt = tyro.cli(Options, args=args, use_underscores=True, description=Options.__doc__)
    return resolve(opt)


def to_dict(opt: Options) -> dict:
    data = dataclasses.asdict(opt)
    data["legacy"] = list(opt.legacy)
    return data


def save_options(opt: Options, path: str | Path) -> None:
    write_text_atomic(path, json.dumps(to_dict(opt), indent=2) + "\n")


def options_from_dict(data: dict) -> Options:
    """Rebuild Options from a saved dict; unknown keys are rejected so a foreign file is noticed."""
    names = {f.name for f in dataclasses.fields(Options)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"options file has unknown keys {unknown}; it was not written by this version of main.py.")
    values = dict(data)
    for key in ("radius_range", "fovy_range", "legacy"):
        if key in values:
            values[key] = tuple(values[key])
    return Options(**values)


def load_options(path: str | Path) -> Options:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read options file {path}: {exc}.") from None
    return options_from_dict(data)
