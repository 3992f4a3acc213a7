"""Every command-line option of the reconstruction stage: one dataclass, grouped for the reader.

Names, types, defaults and meanings follow the original RealFusion options. The groups are nested dataclasses
for `--help` and so that each component receives only its slice (`opt.field` builds the field, `opt.prior` the
guidance, ...), but the flags stay flat and underscored as in the original (``--image_path``, ``--lambda_prior``,
``--O``). Where the original had a bug the fixed behaviour is the default and the original's stays available
through ``--legacy NAME`` (README, "Differences from the original"). Presets and validation run in
:func:`nerf.option_checks.resolve`, right after parsing.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Sequence

from nerf.anneal import AnnealSpec

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_IMAGE = "examples/natural-images/cat/rgba.png"
DEFAULT_PROMPT = "A high-resolution DSLR image of a <token>"
FP16_INITIAL_LOSS_SCALE = 2.0 ** 16  # torch's GradScaler default, the scale the original's --O runs started at
PRIOR_WEIGHT = 1 / FP16_INITIAL_LOSS_SCALE  # default --lambda_prior: the SDS weight of the original's --O runs
ITERS_PER_EPOCH = 100

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
class PriorOptions:
    """The 2-D prior: prompt, diffusion model, learned token, score distillation."""

    guidance: str = "sd"
    """Prior by name (the registry of nerf/guidance): sd (Stable Diffusion + score distillation), zero123
    (Zero-1-to-3, conditioned on the input view and the relative camera), sd+zero123 (both on the same view, as
    Magic123), or oracle (a synthetic scene's ground truth)."""
    guidance_scene: Optional[str] = None
    """Oracle only: FAMILY[:SEED] of a procedural scene, or a scene folder written by make-synthetic-scene.py."""
    oracle_strength: float = 10.0
    """Oracle only: pull of a synthetic pixel towards the ground truth, relative to an input-view pixel."""
    text: str = DEFAULT_PROMPT
    """Prompt; <token> is replaced by the learned token."""
    negative: str = ""
    """Negative prompt (the unconditional branch of classifier-free guidance)."""
    pretrained_model_name_or_path: str = DEFAULT_MODEL
    """Stable Diffusion: a hub id, a local diffusers folder, or a single .safetensors/.ckpt file."""
    pretrained_model_image_size: int = 512
    """Compatibility only: score distillation works at the model's native resolution (512 for SD v1.5)."""
    learned_embeds_path: Optional[str] = None
    """learned_embeds.bin / .safetensors (or a textual-inversion output folder). Without it, <token> becomes the
    word in token_autoinit.txt next to the image."""
    guidance_scale: float = 100.0
    """Classifier-free guidance scale of score distillation."""
    t_range: tuple[float, float] = (0.02, 0.98)
    """Timesteps of Stable Diffusion's score distillation, as fractions of its training steps (the original's
    20..980 of 1000)."""
    dir_text: bool = True
    """View-dependent prompts (front / side / back / overhead / bottom)."""
    suppress_face: Optional[str] = None
    """With --dir_text: appended to the negative prompt of every view except the front one (without view-dependent
    prompts it does nothing)."""
    zero123_model: Optional[str] = None
    """Zero-1-to-3 (--guidance zero123 or sd+zero123): a hub id (the diffusers copy of Zero-1-to-3-XL is
    kxic/zero123-xl) or a local folder in that layout (scripts/make-tiny-zero123.py writes a random-weight one)."""
    zero123_guidance_scale: float = 5.0
    """Classifier-free guidance scale of Zero-1-to-3's score distillation (5, as Magic123 and stable-dreamfusion)."""
    zero123_t_range: tuple[float, float] = (0.02, 0.98)
    """Timesteps of Zero-1-to-3's score distillation, as fractions of its training steps (stable-dreamfusion's
    range; Magic123's joint runs use 0.2 0.6)."""
    cuda_graph: bool = True
    """On CUDA, replay Stable Diffusion's UNet call and VAE encoder as CUDA graphs (same maths, several times
    faster); falls back to eager execution with a warning if capture fails."""
    channels_last: bool = True
    """On CUDA, channels-last convolution weights (cuDNN's layout for fp16 tensor cores: same maths, no layout
    transposes) for the frozen UNet; the VAE encoder keeps the default layout (measured slower in channels-last,
    eager and compiled)."""
    compile: Literal["auto", "on", "off"] = "auto"
    """Stable Diffusion's UNet call and VAE encoder (forward and backward) compiled ahead of time (AOTInductor), inside
    the CUDA graphs when both are on, with
    the compiled code cached per user ($TORCHINDUCTOR_CACHE_DIR, default ~/.cache/realfusion/inductor). on: compile
    (over a minute the first time). auto: only on CUDA, for runs of at least 1000 iterations, and only what an
    earlier --compile on run cached for this model, card and shapes (never a cold compile; nerf/compilation.py)."""


@dataclasses.dataclass
class DataOptions:
    """The input view and the cameras: where the photo was taken from, where training views are sampled."""

    image_path: str = DEFAULT_IMAGE
    """The square RGBA input image; alpha is the object mask."""
    pad_to_square: bool = False
    """Pad a non-square RGBA input with transparent borders to a centred square instead of refusing it."""
    pose_angle: float = 75.0
    """Polar angle (degrees down from the vertical) of the input camera and of the circular path."""
    radius_rot: Optional[float] = 1.8
    """Distance of the input camera and of the circular validation/test path (None: 1.2 * the largest
    --radius_range)."""
    radius_range: tuple[float, float] = (1.0, 1.5)
    """Camera distance range of random training views."""
    fovy_range: tuple[float, float] = (40.0, 70.0)
    """Vertical field-of-view range (degrees) of training views; fixed views use its mean."""
    uniform_sphere_rate: float = 0.5
    """Probability of sampling a training camera direction on the upper hemisphere instead of in (theta, phi)."""
    angle_overhead: float = 30.0
    """Polar angle (degrees) within which a view counts as overhead (or, from below, as bottom)."""
    angle_front: float = 60.0
    """Azimuth width (degrees) of the front sector; the back sector starts at 180."""
    jitter_pose: bool = False
    """Jitter the centre, target and up vector of random training cameras."""
    HW_real: int = 128
    """Side of the input view as trained (the image is resized to it) and of its validation renders."""
    HW_synthetic: int = 96
    """Side of the random views rendered for the prior."""
    num_rays: int = 4096
    """Random pixels of the input view per iteration."""

    @property
    def orbit_radius(self) -> float:
        return self.radius_rot if self.radius_rot else 1.2 * self.radius_range[1]

    @property
    def default_fovy(self) -> float:
        return (self.fovy_range[0] + self.fovy_range[1]) / 2


@dataclasses.dataclass
class RenderOptions:
    """Volume rendering: the scene cube, ray marching, the occupancy grid."""

    bound: float = 0.75
    """The scene is the cube [-bound, bound]^3."""
    cuda_ray: bool = True
    """Use the CUDA extensions when they can be loaded (the PyTorch reference otherwise)."""
    dt_gamma: float = 0.0
    """Adaptive ray-marching step: dt = clamp(t * dt_gamma, dt_min, dt_max); 0 gives a constant step."""
    min_near: float = 0.1
    """Nearest distance along a ray that is rendered."""
    max_steps: int = 512
    """Maximum samples per ray; also sets the marching step 2*sqrt(3)/max_steps."""
    num_steps: int = 64
    """Compatibility only: every renderer here marches through the occupancy grid."""
    upsample_steps: int = 32
    """Compatibility only: every renderer here marches through the occupancy grid."""
    density_thresh: float = 10.0
    """Occupancy threshold: a cell is occupied above min(mean density, density_thresh)."""
    update_extra_interval: int = 16
    """Update the occupancy grid every this many iterations."""
    occupancy_grid_size: int = 128
    """Cells per axis of the occupancy grid, a power of two (smaller grids make CPU runs faster)."""
    max_ray_batch: int = 4096
    """Rays per chunk of validation and test renders with the PyTorch marcher (the CUDA marcher renders whole
    frames)."""
    ray_stream: bool = False
    """On CUDA, draw and march the training rays on a second stream, so that the marchers' sample-count reads wait
    for the march alone instead of the previous iteration's backward (same samples; nerf/ray_stream.py). Slower on
    the H100 measured (the host bounds the iteration; README, Performance)."""


@dataclasses.dataclass
class FieldOptions:
    """The instant-NGP field: multi-resolution grid, density blob, background network."""

    grid_type: Literal["tiled", "hash"] = "tiled"
    """tiled: the original's grid (fine levels share one xy table along z); hash: instant-NGP hashing."""
    grid_levels: int = 16
    """Levels of the multi-resolution grid (2 features each)."""
    grid_resolution: int = 2048
    """The finest grid level has resolution grid_resolution * bound."""
    log2_hashmap_size: int = 16
    """log2 of the largest table of a grid level: a level with fewer grid vertices than that keeps one row per
    vertex."""
    grid_levels_mask: int = 8
    """Number of finest grid levels disabled early in training (0: none)."""
    grid_levels_mask_iters: int = 3000
    """The masked grid levels are enabled after this many iterations."""
    blob_density: float = 5.0
    """Peak of the Gaussian density blob added at the centre (helps the first iterations find the object)."""
    blob_radius: float = 0.2
    """Standard deviation of the density blob."""
    bg_radius: float = 1.4
    """> 0: a background network colours rays during training; 0: white background."""
    normal_type: Literal["finite_difference", "pred"] = "finite_difference"
    """Surface normals for shading and the normal losses. finite_difference: central differences of the density (six
    more field evaluations per sample whenever normals are used). pred: a small head on the grid features predicts
    them (no further evaluation; Ref-NeRF and threestudio's predicted normals): the orientation and smoothness losses
    and the shading use them, and --lambda_normal_pred ties them to the density-gradient normals of 4096 samples per
    view drawn by occupancy. Part of the model: a checkpoint loads only with the normal_type it was trained with."""


@dataclasses.dataclass
class TrainOptions:
    """Optimisation: schedule, learning rate, precision, averaging, checkpoints."""

    iters: int = 5000
    """Training iterations (one synthetic and one input-view step each)."""
    eval_interval: int = 5
    """Validate and save a checkpoint every this many epochs (one epoch = 100 iterations)."""
    optim: Literal["adan", "adam", "adamw"] = "adam"
    """Optimiser (the original's adamw ran plain Adam; here adamw is AdamW); adan multiplies every learning rate by
    5, as the original."""
    lr: float = 1e-3
    """Base learning rate of the MLPs; the grid tables use 10x."""
    lr_warmup: Optional[bool] = None
    """Linear warm-up then cosine decay of the learning rate (off by default, as the original effectively ran)."""
    min_lr: float = 1e-6
    """Final learning rate of the cosine decay (with --lr_warmup True)."""
    warm_iters: int = 2000
    """Warm-up iterations (with --lr_warmup True)."""
    fp16: bool = False
    """Mixed precision on CUDA (autocast + loss scaling); set by --O."""
    ema_decay: float = 0.95
    """Decay of the weight average that renders the validation orbit and everything after training. Updated once per
    epoch; the n-th update uses min(ema_decay, (1 + n) / (10 + n)), as torch-ema, so 0.95 is reached only from the
    170th epoch (17,000 iterations) on."""
    max_bad_steps: int = 20
    """Stop after this many consecutive iterations with a non-finite loss (those steps are skipped)."""


@dataclasses.dataclass
class ObjectiveOptions:
    """The loss: weights (each annealable), shading schedule, input-view schedule and camera noise."""

    lambda_prior: AnnealSpec = _anneal([PRIOR_WEIGHT])
    """Weight of the prior's gradient (score distillation). The default, 2^-16, is the weight the original's --O
    runs effectively had (their SDS gradient bypassed the fp16 loss scale of 65536); measured with a trained prior,
    a weight of 1 overwhelms the input view (Adam normalises the summed gradient). With --guidance sd+zero123 it
    weights the Stable Diffusion term (--lambda_prior_zero123 the other)."""
    lambda_prior_zero123: AnnealSpec = _anneal([40 * PRIOR_WEIGHT])
    """Weight of Zero-1-to-3's score distillation (--guidance zero123 or sd+zero123; --lambda_prior then weights only
    the Stable Diffusion term). Default 40 x the default --lambda_prior: Magic123's ratio of the two priors (1 : 40,
    at guidance scales 100 and 5)."""
    lambda_image: AnnealSpec = _anneal([5.0])
    """Masked colour error on the input view."""
    lambda_mask: AnnealSpec = _anneal([0.5])
    """Opacity vs. alpha error on the input view."""
    lambda_entropy: AnnealSpec = _anneal([1e-4])
    """Binary entropy of the synthetic views' opacity (pushes it to 0 or 1)."""
    lambda_opacity: AnnealSpec = _anneal([0.0])
    """Mean squared opacity of the synthetic views (discourages spurious density)."""
    lambda_orient: AnnealSpec = _anneal([1e-2])
    """Orientation loss: penalises normals facing away from the camera."""
    lambda_smooth: AnnealSpec = _anneal([0.0])
    """3-D smoothness of the normals (a jittered second evaluation)."""
    lambda_smooth_2d: AnnealSpec = _anneal([0.5])
    """2-D smoothness of the rendered normal map."""
    lambda_normal_pred: AnnealSpec = _anneal([0.1])
    """With --normal_type pred: occupancy-weighted mean of 1 - (predicted normal . density-gradient normal), Ref-NeRF's
    predicted-normal loss; its gradient reaches both normals, so shading gradients on the predicted normals shape
    the geometry. Not tuned yet: 0.1 weighs it like the other normal regularisers."""
    albedo: bool = False
    """Albedo shading for the whole run (sets albedo_iters = iters)."""
    albedo_iters: int = 1000
    """Synthetic views use albedo shading for this many iterations, then albedo, textureless or lambertian shading
    at random (20 / 40 / 40 %)."""
    real_iters: int = 0
    """Input-view losses start at this iteration."""
    real_every: int = 1
    """Input-view losses every this many iterations."""
    replace_synthetic_camera_every: int = 10
    """Every N-th prior step renders the input camera (with the front prompt); 0 disables."""
    replace_synthetic_camera_noise: float = 0.02
    """Std of the offset added to the rays of a replaced camera."""
    noise_real_camera: float = 0.001
    """Std of the offset added to the input view's rays."""
    noise_real_camera_annealing: bool = True
    """Anneal that offset linearly to 0 over training."""


@dataclasses.dataclass
class OutputOptions:
    """What a run writes besides checkpoints: videos, real-view renders, the mesh, logging."""

    HW_vis: int = 128
    """Side of the validation orbit's views and of the test video frames (the input view is validated at
    --HW_real)."""
    save_test_name: str = "df_test"
    """Prefix of the test videos."""
    test_on_real_data: bool = False
    """Test mode renders the circular path at the input resolution (8 views, PNG frames)."""
    save_mesh: bool = False
    """Export a textured mesh (obj + mtl + png, glb) at the end."""
    mesh_resolution: Optional[int] = None
    """Marching-cubes grid side of the mesh export (default: 2 x --occupancy_grid_size, at most 256: the original's
    256 at the default grid, and a mesh as fine as a small run's field, made in seconds, for small runs)."""
    mesh_threshold: Optional[float] = None
    """Density iso-level of the mesh (default: the occupancy threshold min(mean density, density_thresh))."""
    mesh_decimate_target: int = 50_000
    """Target face count of the exported mesh (0 keeps every face)."""
    wandb: bool = False
    """Also log the training scalars and validation images to Weights & Biases (needs the wandb package)."""


def _group(cls: type) -> dataclasses.Field:
    return dataclasses.field(default_factory=cls)


@dataclasses.dataclass
class Options:
    """RealFusion reconstruction: fit a NeRF to one RGBA image with a Stable Diffusion prior."""

    O: bool = False
    """Recommended preset: fp16, view-dependent prompts, CUDA ray marching (with a PyTorch fallback)."""
    O2: bool = False
    """Preset without the CUDA extensions: fp16 only with --albedo, view-dependent prompts, PyTorch marching."""
    test: bool = False
    """Test mode: render the 360-degree videos from the --ckpt checkpoint (the latest by default), no training."""
    mesh_only: bool = False
    """Export the textured mesh of a trained workspace: no training, no videos."""
    workspace: Optional[str] = None
    """Output folder; a run on an existing workspace resumes from its latest checkpoint."""
    run_name: str = "default"
    """Automatic workspaces are outputs/{run_name}/{date}--seed-{seed}."""
    ckpt: str = "latest"
    """Checkpoint to start from: scratch | latest | latest_model (its weights only, a fresh optimiser) | best (the
    same file as latest: no separate best checkpoint is kept) | a checkpoint path."""
    seed: int = 101
    """Seeds Python, NumPy and torch, and names automatic workspaces."""
    debug: bool = False
    """Automatic workspace name (--workspace is ignored), training renders every 50 iterations, no wandb."""
    force_unlock: bool = False
    """Take over a workspace locked by a run on another host (a dead run of this host is taken over anyway)."""
    legacy: tuple[LegacyBehaviour, ...] = ()
    """Reproduce a fixed behaviour of the original (see README, "Differences from the original")."""
    prior: PriorOptions = _group(PriorOptions)
    data: DataOptions = _group(DataOptions)
    render: RenderOptions = _group(RenderOptions)
    field: FieldOptions = _group(FieldOptions)
    train: TrainOptions = _group(TrainOptions)
    objective: ObjectiveOptions = _group(ObjectiveOptions)
    output: OutputOptions = _group(OutputOptions)

    def uses(self, behaviour: LegacyBehaviour) -> bool:
        return behaviour in self.legacy

    @property
    def inference(self) -> bool:
        """A run on a trained workspace (--test, --mesh_only): it trains nothing and keeps its options.json."""
        return self.test or self.mesh_only


GROUPS = tuple(f.name for f in dataclasses.fields(Options)
               if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory))
"""The nested option groups, in --help order."""
ANNEALED_FIELDS = tuple(f.name for f in dataclasses.fields(ObjectiveOptions) if f.name.startswith("lambda_"))
