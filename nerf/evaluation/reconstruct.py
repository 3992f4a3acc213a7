"""Reconstructions for the benchmark: `main.py`'s own run (nerf.build) on a synthetic scene's input view, either
prior-free or with the oracle chosen by name (`--guidance oracle --guidance_scene SCENE`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nerf.build import open_run
from nerf.scenes.files import load_scene
from nerf.guidance.oracle import DEFAULT_STRENGTH
from nerf.guidance.stable_diffusion import replace_token_placeholder
from nerf.option_checks import parse
from nerf.options import DEFAULT_PROMPT, Options
log = logging.getLogger("realfusion")

# Reduced (CPU): the prior-free CPU test's sizes (tests/test_reconstruction.py), a 32^2 synthetic view, 128 samples
# per ray, no normal-based regularisers (normals cost six more field evaluations per sample) and one validation at
# the end. Default: the options' own defaults.
SIZES: dict[str, list[str]] = {
    "reduced": ["--iters", "400", "--HW_real", "32", "--HW_synthetic", "32", "--num_rays", "1024",
                "--occupancy_grid_size", "32", "--max_steps", "128", "--lambda_orient", "0", "--lambda_smooth_2d", "0",
                "--HW_vis", "8", "--eval_interval", "100", "--mesh_resolution", "64"],
    "default": [],
}
MODES = ("prior_free", "oracle")
# Albedo renders throughout: the oracle's target is the object's colour, and a view shaded under a random light
# (the lambertian/textureless steps after --albedo_iters) has no ground truth to compare with. The oracle's pull is
# set by --oracle_strength at weight 1 (the default weight, 2^-16, is score distillation's).
MODE_ARGS = {"prior_free": ["--lambda_prior", "0"], "oracle": ["--albedo", "--guidance", "oracle", "--lambda_prior", "1"]}
# Score distillation from trained priors: the toy SD prior with the true word or a learned token, the toy
# Zero-1-to-3 alone (the input view as its condition), or both on the same rendered view (the word for the toy SD).
PRIOR_MODES = ("toy", "toy_ti", "zero123", "joint")
ZERO123_MODES = ("zero123", "joint")  # the modes that need a toy Zero-1-to-3
# Settings of score distillation from a small 64-pixel prior, chosen by measurement (README, "A prior that knows a
# small world"). Its latent gradient reaches a render through a 4x VAE at 64 px, not SD's 8x VAE after an 8x
# upsampling, so each rendered pixel gets about 16 times less of it than from SD 1.5: 2^-12 = 16 x main.py's
# 2^-16. At 16x16 latents guidance 100 mostly saturates (its gradient agrees less with the true view's than
# guidance 7.5-20 does). Albedo renders throughout: such a prior has only seen the objects' own colours, never a
# textureless or relit view.
TOY_GUIDANCE_SCALE = 20.0
# A learned token's runs guide at 7.5. Strong guidance replaces the instance by its class at every timestep but the
# smallest, for a token as for the word (README "Guiding the token less", the fidelity check): the word needs that
# pull for its class's shape (at 7.5 its F@2% fell on all four families, by 0.004 to 0.075), but a token carries the
# instance only where guidance leaves it. Measured on the CPU suite (2 held-out instances x 2 seeds per family): the
# token at 7.5 against it at 20, novel view +0.2 to +0.8 dB on three families (-0.2 on the fourth), F@2% within 0.002
# or better on all four, input view +1.3 to +3.7 dB on all four.
TOY_TI_GUIDANCE_SCALE = 7.5
TOY_PRIOR_WEIGHT = 2.0**-12
# The input view's opacity weight of every run of a suite with a trained prior, prior-free included (one objective,
# so that runs differ by their prior alone): 4 x main.py's 0.5. The colour loss sees only the pixels inside the
# input mask, so outside it only this term holds the density a prior adds around the object (the class's other legs,
# a wider body) out of the input view. Measured (README, "What the input view loses is its silhouette"): in the
# reduced suite on the CPU +3.3 to +8.5 dB of input view in all 12 runs with a prior, F@2% unchanged on average;
# at the GPU sizes (seed 0, 2 instances per family, H200) the class word's input view went from 24.7-34.4 dB to
# 30.6-37.2 dB.
TOY_LAMBDA_MASK = 2.0
# Settings of score distillation from a toy Zero-1-to-3 (scripts/train-toy-zero123.py). Guidance 5 is main.py's
# default (Magic123, stable-dreamfusion), not measured here. The weight was measured with the shipped
# examples/toy-zero123 (README "A toy Zero-1-to-3", seed 0, 2 held-out instances per family, 1000 iterations at
# 64 px, H100): of 40, 10 and 2.5 x 2^-12, the smallest kept the input view best on every family (25-34 dB
# against 19-26 at 40, which is main.py's Magic123 ratio moved by the toy prior's factor 16) and gave the best
# F@2% on 3 of 4. In the joint mode each prior keeps its own weight.
TOY_ZERO123_GUIDANCE_SCALE = 5.0
TOY_ZERO123_WEIGHT = 2.5 * 2.0**-12


@dataclass(frozen=True)
class Zero123Run:
    """Score distillation from a Zero-1-to-3 folder, conditioned on the run's input view."""

    model: Path
    guidance_scale: float = TOY_ZERO123_GUIDANCE_SCALE
    lambda_prior: float = TOY_ZERO123_WEIGHT

    def args(self) -> list[str]:
        return ["--zero123_model", str(self.model), "--zero123_guidance_scale", str(self.guidance_scale),
                "--lambda_prior_zero123", str(self.lambda_prior)]


@dataclass(frozen=True)
class PriorRun:
    """Score distillation from a Stable-Diffusion-format prior (main.py's defaults otherwise, the suite's sizes):
    the prompt names the object by `word`, or by a token learned from the input view (`learned_embeds`); with
    `zero123` a Zero-1-to-3 joins it (`--guidance sd+zero123`), or replaces it when `model` is None."""

    model: Path | None
    guidance_scale: float = TOY_GUIDANCE_SCALE
    word: str | None = None
    learned_embeds: Path | None = None
    lambda_prior: float = TOY_PRIOR_WEIGHT
    albedo: bool = True
    zero123: Zero123Run | None = None

    def args(self) -> list[str]:
        albedo = ["--albedo"] if self.albedo else []
        if self.model is None:
            assert self.zero123 is not None, "a prior run needs a Stable-Diffusion-format prior or a Zero-1-to-3"
            return ["--guidance", "zero123", *self.zero123.args(), *albedo]
        args = ["--guidance", "sd" if self.zero123 is None else "sd+zero123",
                "--pretrained_model_name_or_path", str(self.model),
                "--guidance_scale", str(self.guidance_scale), "--lambda_prior", str(self.lambda_prior), *albedo,
                *(self.zero123.args() if self.zero123 is not None else [])]
        if self.learned_embeds is not None:
            return [*args, "--learned_embeds_path", str(self.learned_embeds), "--text", DEFAULT_PROMPT]
        assert self.word is not None, "a prior run names the object by a word or a learned token"
        return [*args, "--text", replace_token_placeholder(DEFAULT_PROMPT, self.word)]


def mode_args(mode: str, prior: PriorRun | None = None) -> list[str]:
    if mode in PRIOR_MODES:
        if prior is None:
            raise ValueError(f"mode {mode} needs a PriorRun")
        return prior.args()
    return list(MODE_ARGS[mode])


def reconstruction_args(scene_dir: Path, workspace: Path, mode: str, size: str = "default", seed: int = 0,
                        oracle_strength: float = DEFAULT_STRENGTH, extra_args: Sequence[str] = (),
                        cuda: bool = True, prior: PriorRun | None = None) -> list[str]:
    """The main.py command line of one suite run: the scene's input view, the size, the prior by name."""
    args = ["--image_path", str(scene_dir / "rgba.png"), "--workspace", str(workspace), "--seed", str(seed),
            "--ckpt", "scratch", "--guidance_scene", str(scene_dir), "--oracle_strength", str(oracle_strength),
            *SIZES[size], *mode_args(mode, prior), *extra_args]
    return args if cuda else [*args, "--no_cuda_ray"]


def reconstruct(scene_dir: str | Path, workspace: str | Path, mode: str, size: str = "default",
                device: torch.device | None = None, seed: int = 0, oracle_strength: float = DEFAULT_STRENGTH,
                extra_args: Sequence[str] = (), prior: PriorRun | None = None) -> Path:
    """Train from scratch on SCENE/rgba.png into `workspace` (checkpoint + options.json, as main.py writes)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scene_dir, workspace = Path(scene_dir), Path(workspace)
    train(scene_dir, parse(reconstruction_args(scene_dir, workspace, mode, size, seed, oracle_strength, extra_args,
                                               cuda=device.type == "cuda", prior=prior)), device)
    return workspace


def train(scene_dir: Path, opt: Options, device: torch.device) -> None:
    """One main.py training run in this process, from its parsed command line (`reconstruction_args`)."""
    _, conventions = load_scene(scene_dir)
    data = opt.data
    if (conventions.pose_angle, conventions.radius, conventions.fovy) != (data.pose_angle, data.orbit_radius,
                                                                         data.default_fovy):
        log.warning("scene %s was rendered with other camera conventions than the options use", scene_dir)
    with open_run(opt, device=device) as run:
        run.trainer.train()
