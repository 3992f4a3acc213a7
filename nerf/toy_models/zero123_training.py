"""Training of a toy Zero-1-to-3 on the toy world (`world.py`), saved in the published diffusers layout that
`nerf.guidance.zero123_model` loads.

Zero-1-to-3's weights are out of reach offline, and a random-weight model can only show that the code runs, so
the image-conditioned prior is proven on a model trained here, on the same classes and held-out instances as the toy
Stable Diffusion prior (`training.py`). A training sample is a pair of views of one instance: the UNet (8 input
channels) denoises the target view's latent given the input view's latent (the posterior's mode, unscaled, as the
guidance encodes it) and the input view's CLIP image embedding joined with the relative camera (the guidance's own
`relative_camera`) through cc_projection. A share DROP of the samples has both conditions zeroed, as the guidance's
unconditional branch has them, so classifier-free guidance works. The VAE is the toy prior's (`--prior`, frozen) or
trained first as the toy prior's is; the run machinery (phases, EMA, checkpoints in OUT/.cache, resuming,
--max_minutes) is `training.py`'s. `scripts/train-toy-zero123.py` is its command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.fileio import write_text_atomic
from nerf.guidance.zero123 import clip_pixels, relative_camera
from nerf.toy_models import training
from nerf.toy_models.tiny_zero123 import CLIP_MEAN, CLIP_STD, clip_processor, ddim_scheduler, save_parts
from nerf.toy_models.training import Phase, Run, Size, add_run_flags, encode_views, noisy_latents
from nerf.toy_models.world import (
    DEFAULT_HELD_OUT, DEFAULT_OBJECTS, cached_views, check_words, class_rows, held_out_objects,
    parse_objects, shown_path, world_specs, write_world)

# The VAE of each size is the toy prior's (the two models share it through --prior); the UNet is the toy prior's at
# 8 input channels, attending to one token (the projected image embedding) instead of 77 text states.
SIZES = {
    "cpu": replace(training.SIZES["cpu"], steps=(training.SIZES["cpu"].steps[0], 60), text={},
                   image=dict(width=32, intermediate=64, layers=1, heads=4, patch=8)),
    "gpu": replace(training.SIZES["gpu"], steps=(training.SIZES["gpu"].steps[0], 12000), text={},
                   image=dict(width=128, intermediate=512, layers=3, heads=4, patch=8)),
}
DROP = 0.15  # share of samples without conditioning (zero embedding, zero input latent): classifier-free guidance
# Share of pairs whose input is the instance's view from main.py's input camera, the one input view that
# reconstruction conditions on; the other pairs take any of the instance's views (which include that camera too).
FRONT_INPUT = 0.5
OPTIONS = ("objects", "held_out", "size", "seed")  # the recipe's options taken as given (steps and prior: below)
USAGE = "Train a toy Zero-1-to-3 on the toy world of classes of procedural objects."


def build_image_models(size: Size, seed: int, prior: str | None) -> dict[str, torch.nn.Module]:
    """VAE (the prior's, or a new one), UNet with 8 input channels, CLIP image encoder and cc_projection.

    cc_projection starts as Zero-1-to-3's does: the identity on the image embedding, zero on the camera."""
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    try:
        vae = AutoencoderKL.from_pretrained(prior, subfolder="vae").float() if prior else training.toy_vae(size)
    except (OSError, ValueError) as exc:  # the prior folder moved or broke since the run started
        raise UserError(f"cannot read the VAE of --prior {prior} ({type(exc).__name__}); the run needs its prior "
                        "folder where it was.") from exc
    width = size.image["width"]
    unet = training.toy_unet(size, 8, width)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, intermediate_size=size.image["intermediate"], num_hidden_layers=size.image["layers"],
        num_attention_heads=size.image["heads"], patch_size=size.image["patch"], image_size=size.resolution,
        projection_dim=width))
    projection = torch.nn.Linear(width + 4, width)
    with torch.no_grad():
        projection.weight.copy_(torch.eye(width, width + 4))
        projection.bias.zero_()
    return {"vae": vae, "unet": unet, "image_encoder": encoder, "cc_projection": projection}


def zero123_loss(unet: Any, encoder: Any, projection: Any, alphas_cumprod: torch.Tensor, latents: torch.Tensor,
                 noise: torch.Tensor, t: torch.Tensor, input_latent: torch.Tensor, clip: torch.Tensor,
                 pose: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Epsilon prediction of the target latent given the input view (its latent and its CLIP embedding joined with
    the relative camera `pose` [B, 4]); where `keep` is 0 both conditions are zero, as in the guidance's
    unconditional branch."""
    embedding = encoder(pixel_values=clip).image_embeds
    condition = projection(torch.cat([embedding, pose], -1))[:, None] * keep[:, None, None]
    inputs = torch.cat([noisy_latents(alphas_cumprod, latents, noise, t), input_latent * keep[:, None, None, None]], 1)
    predicted = unet(inputs, t, encoder_hidden_states=condition).sample
    return F.mse_loss(predicted.float(), noise)


class Zero123Training(Run):
    """A training run of the toy Zero-1-to-3: the toy prior's phases with pairs of views in the UNet phase."""

    trained = ("unet", "image_encoder", "cc_projection")

    def build_models(self) -> dict[str, torch.nn.Module]:
        return build_image_models(self.size, self.recipe["seed"], self.recipe["prior"])

    def pair(self, target: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """An input view of the same instance for each target view: its input-camera view (an instance's first
        views, `world.render_object_cameras`) for a share FRONT_INPUT, else uniform over its views."""
        owners = self.views.objects[target]
        counts = torch.bincount(self.views.objects)
        starts = torch.cumsum(counts, 0) - counts
        anyone = starts[owners] + (torch.rand(len(target), generator=g) * counts[owners]).long()
        return torch.where(torch.rand(len(target), generator=g) < FRONT_INPUT, starts[owners], anyone)

    def unet_phase(self) -> Phase:
        from diffusers import DDPMScheduler

        from nerf.toy_models.sd_parts import sd15_schedule

        moments, self.scale = encode_views(self.models["vae"], self.images)
        modes = moments.chunk(2, 1)[0]  # the input view's latent: the posterior's mode, unscaled
        alphas = DDPMScheduler(**sd15_schedule()).alphas_cumprod.to(self.device)
        steps, batch = len(alphas), self.size.batch[1]
        loss = training.compiled(lambda *tensors: zero123_loss(
            self.models["unet"], self.models["image_encoder"], self.models["cc_projection"], alphas, *tensors),
            self.compile)

        def draw(g: torch.Generator) -> torch.Tensor:
            """(target sample, noise, t, input latent, input CLIP pixels, relative camera, kept), drawn on `g`."""
            target = self.draw(batch, g)
            source = self.pair(target, g)
            pose = relative_camera(self.views.cameras(target), self.views.cameras(source)).to(self.device)
            keep = (torch.rand(batch, generator=g) >= DROP).float().to(self.device)
            target, source = target.to(self.device), source.to(self.device)
            sample, noise, t = self.noisy_draw(moments[target], steps, g)
            clip = clip_pixels(self.images[source].float() / 255, self.size.resolution, CLIP_MEAN, CLIP_STD)
            return loss(sample, noise, t, modes[source], clip, pose, keep)

        return self.trained_phase(draw)

    def write_folder(self, vae: Any, trained: dict[str, torch.nn.Module]) -> None:
        """The published layout in fp16 safetensors, staged in .cache and moved into OUT part by part."""
        parts = {"unet": trained["unet"].half(), "vae": vae.half(), "image_encoder": trained["image_encoder"].half(),
                 "feature_extractor": clip_processor(self.size.resolution), "scheduler": ddim_scheduler(),
                 "cc_projection": trained["cc_projection"].half()}
        cache = self.out / ".cache"
        staging, trash = (Path(tempfile.mkdtemp(prefix=prefix, dir=cache)) for prefix in (".model.", ".old."))
        try:
            save_parts(parts, staging)
            # transformers >= 5 loads in the dtype the config names: fp32, as the other parts come back
            config = staging / "image_encoder" / "config.json"
            config.write_text(json.dumps({**json.loads(config.read_text()), "dtype": "float32"}, indent=2) + "\n")
            for entry in sorted(staging.iterdir()):
                target = self.out / entry.name
                if target.is_dir():
                    os.replace(target, trash / entry.name)
                os.replace(entry, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(trash, ignore_errors=True)

    def write_card(self, done: tuple[int, int]) -> None:
        write_zero123_card(self, done)
        write_world(self.out, self.objects, self.held_out)


def write_zero123_card(run: Zero123Training, done: tuple[int, int]) -> None:
    """README.md: the recipe, the world (training and held-out instances), how to make the model again."""
    recipe, size = run.recipe, run.size
    vae = (f"the toy prior's (`{shown_path(recipe['prior'])}`, frozen)" if recipe["prior"]
           else f"trained here, {done[0]}/{recipe['steps'][0]} steps")
    options = ["--objects", *recipe["objects"], *(["--held_out", *recipe["held_out"]] if recipe["held_out"] else []),
               *(["--prior", shown_path(recipe["prior"])] if recipe["prior"] else []), "--size", recipe["size"],
               "--steps", str(done[1]), "--seed", str(recipe["seed"])]
    text = f"""# Toy Zero-1-to-3 (RealFusion tests)

A tiny Zero-1-to-3 in the published diffusers layout (fp16 weights) trained on {len(run.objects)} instances of
{len(set(o.word for o in run.objects))} classes of procedural objects, made to test score distillation from an
image-conditioned prior end to end. The held-out instances were never shown to it. It is for testing the method,
**not for real photos**.

| word | training instances | held-out instances | views |
| --- | --- | --- | --- |
{chr(10).join(class_rows(run.objects, run.held_out, run.views))}

- Pairs: an input and a target view of one instance from the instance's views (main.py's random training
  cameras and, for a tenth of them, the input camera), RGB over white; the input is the view from main.py's input
  camera in {FRONT_INPUT:.0%} of the pairs (reconstruction conditions on that view), any view otherwise. The
  condition is the relative camera (polar, sin and cos azimuth, radius of the target minus the input:
  `nerf.guidance.zero123.relative_camera`).
- Conditioning: the input view's VAE latent (posterior mode, unscaled) beside the noisy latent (8 UNet input
  channels); its CLIP image embedding with the camera through cc_projection as the one cross-attention token;
  both zeroed in {DROP:.0%} of the samples (classifier-free guidance).
- Resolution: {size.resolution}x{size.resolution} images, {run.latent_side}x{run.latent_side}x4 latents (size
  `{recipe["size"]}`); CLIP image encoder: width {size.image["width"]}, {size.image["layers"]} layers, {size.image["patch"]} px patches.
- Training: VAE {vae}; UNet, image encoder and cc_projection {done[1]}/{recipe["steps"][1]} steps (saved: their
  EMA), SD 1.5's noise schedule, seed {recipe["seed"]}; {run.state["seconds"]:.0f} s on
  {training.device_label(run.device)}.
- Regenerate: `python scripts/train-toy-zero123.py OUT {" ".join(options)}` (GPU kernels are not bit-reproducible,
  so a regenerated model is equivalent, not identical). `.cache/` (rendered views and the resumable checkpoint) is
  not part of the model. `objects.json` maps each training and held-out instance to its word.
"""
    write_text_atomic(run.out / "README.md", text)


def given_options(args: argparse.Namespace) -> dict:
    """The options given, in the recipe's terms (--steps N is the UNet phase's; the VAE's follows from --prior)."""
    given = {key: getattr(args, key) for key in OPTIONS if getattr(args, key) is not None}
    if args.prior is not None:
        given["prior"] = str(args.prior.expanduser().resolve())
    return given


def recipe_of(args: argparse.Namespace, stored: dict | None) -> dict:
    """The run's recipe: defaults, the options given, the prior's world when --prior is given without a world."""
    given = given_options(args)
    if stored is None and "prior" in given and "objects" not in given and "held_out" not in given:
        resolution = SIZES[given.get("size", "gpu")].resolution
        world = training.check_prior(Path(given["prior"]), resolution)
        given["objects"], given["held_out"] = world_specs(world["objects"], world["held_out"])
    prior = given.get("prior", (stored or {}).get("recipe", {}).get("prior"))
    size = given.get("size", (stored or {}).get("recipe", {}).get("size", "gpu"))
    if args.steps is not None:
        if args.steps < 0:
            raise UserError(f"--steps must be >= 0, got {args.steps}.")
        given["steps"] = [0 if prior else SIZES[size].steps[0], args.steps]

    def defaults(given: dict) -> dict:
        size = given.get("size", "gpu")
        default_world = "objects" not in given
        return dict(objects=list(DEFAULT_OBJECTS), held_out=list(DEFAULT_HELD_OUT) if default_world else [],
                    size=size, seed=0, prior=None,
                    steps=[0 if given.get("prior") else SIZES[size].steps[0], SIZES[size].steps[1]])

    return training.merge_recipe(given, stored["recipe"] if stored else None, defaults)


def train(args: argparse.Namespace) -> None:
    """Check everything the user gave (the prior included) before OUT is touched, then train, checkpoint, save."""
    started, deadline, stored = training.start(args)
    recipe = recipe_of(args, stored)
    size = SIZES[recipe["size"]]
    objects = [o for spec in recipe["objects"] for o in parse_objects(spec)]
    if not objects:
        raise UserError("no objects to train on: give --objects family:seeds=word ...")
    held_out = held_out_objects(recipe["held_out"], objects)
    check_words(objects, training.offline_tokenizer())  # the joint suite runs name them to the toy prior
    if recipe["prior"] and stored is None:
        training.check_same_world(Path(recipe["prior"]), size.resolution, objects, held_out, "--prior",
                                  "leave --objects and --held_out out to take its world, or give exactly its instances")
    device = training.choose_device(args.device)
    views = cached_views(args.out, objects, size.resolution, size.views, recipe["seed"], device)
    run = Zero123Training(args.out, recipe, objects, held_out, views, None, device, started,
                     training.compile_mode(args.compile, device), size=size)
    training.finish(run, stored, deadline, args, "toy Zero-1-to-3")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=USAGE)
    p.add_argument("out", type=Path, help="output folder (a new one, or an unfinished one with --resume)")
    p.add_argument("--prior", type=Path, default=None,
                   help="a toy Stable Diffusion prior (scripts/train-toy-prior.py) at the same size: its VAE is reused "
                        "frozen and, unless --objects or --held_out are given, its world; without it a VAE is "
                        "trained first")
    p.add_argument("--objects", nargs="*", default=None, metavar="FAMILY:SEEDS=WORD",
                   help=f"procedural classes (default: the prior's, else {' '.join(DEFAULT_OBJECTS)})")
    p.add_argument("--held_out", nargs="*", default=None, metavar="FAMILY:SEEDS",
                   help=f"instances kept from training (default: the prior's, else with the default objects "
                        f"{' '.join(DEFAULT_HELD_OUT)})")
    p.add_argument("--size", choices=tuple(SIZES), default=None, help="gpu (default): 64x64 images; cpu: 32x32 (tests)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="steps of the UNet phase (default: " + ", ".join(f"{size.steps[1]} with --size {name}"
                                                                         for name, size in SIZES.items()) + ")")
    add_run_flags(p)
    return p.parse_args(argv)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    train(parse_args(argv))
    return 0
