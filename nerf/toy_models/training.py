"""Training of a toy Stable Diffusion prior on the toy world (`world.py`): a VAE phase, then a UNet and text-encoder
phase, checkpointed in OUT/.cache and resumable; the result is a standard SD 1.x folder (fp16 safetensors).

SD's weights are out of reach offline, so SDS and textual inversion are proven on such a prior: an AutoencoderKL,
then a UNet2DConditionModel (epsilon prediction, SD 1.5's noise schedule) trained jointly with a small CLIP text
encoder. `scripts/train-toy-prior.py` is its command line.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.fileio import write_atomic
from nerf.toy_models.sd_parts import (
    clip_text_encoder, load_tokenizer, save_fp16_pipeline, sd15_schedule, write_tokenizer_files)
from nerf.toy_models.world import (
    DEFAULT_HELD_OUT, DEFAULT_OBJECTS, ToyObject, Views, cached_views, caption_ids, check_words, held_out_objects,
    load_world, parse_objects, parse_renders, write_card)


@dataclass(frozen=True)
class Size:
    """One model size: image side, views per object, default steps, optimisation and the three networks."""

    resolution: int
    views: int  # per procedural instance
    steps: tuple[int, int]  # VAE, UNet
    batch: tuple[int, int]
    lr: tuple[float, float]
    warmup: int  # linear learning-rate warm-up steps of each phase; constant after, so a resumed run continues
    vae: dict = field(default_factory=dict)  # block_out_channels, layers_per_block, norm_num_groups
    unet: dict = field(default_factory=dict)  # block_out_channels, layers_per_block, attention_head_dim, groups
    text: dict = field(default_factory=dict)  # width, intermediate, layers, heads
    image: dict = field(default_factory=dict)  # Zero-1-to-3's CLIP image encoder: width, intermediate, layers, heads,
    # patch (its input side is the image side)


SIZES = {
    "cpu": Size(32, 24, (30, 40), (8, 8), (1e-3, 1e-3), 10,
                dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8),
                dict(block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=4, norm_num_groups=8),
                dict(width=32, intermediate=64, layers=1, heads=4)),
    "gpu": Size(64, 240, (3000, 8000), (64, 128), (5e-4, 3e-4), 200,
                dict(block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=32),
                dict(block_out_channels=(64, 96, 96), layers_per_block=2, attention_head_dim=8, norm_num_groups=32),
                dict(width=128, intermediate=512, layers=3, heads=4)),
}
USAGE = "Train a toy Stable Diffusion that knows a small world of classes of procedural objects."
KL_WEIGHT = 1e-6  # SD's VAE weight of the KL term (per pixel here, as the reconstruction loss)
EMA_DECAY = 0.999
CHECKPOINT_EVERY = 1000
FIELDS = ("objects", "renders", "held_out", "size", "seed", "steps", "init", "colour_share")


def default_recipe(given: dict) -> dict:
    """A new toy prior's recipe where an option is not given: the default world at the gpu size, seed 0."""
    size = given.get("size", "gpu")
    default_world = "objects" not in given and "renders" not in given  # the default held-out seeds need it
    steps = [0 if given.get("init") else SIZES[size].steps[0], SIZES[size].steps[1]]
    return dict(objects=list(DEFAULT_OBJECTS), renders=[], held_out=list(DEFAULT_HELD_OUT) if default_world else [],
                size=size, seed=0, steps=steps, init=None, colour_share=0.0)


def settings(args: argparse.Namespace, stored: dict | None) -> dict:
    """The toy prior's recipe from its command line (`merge_recipe`)."""
    given = {key: getattr(args, key) for key in FIELDS if getattr(args, key) is not None}
    if not 0 <= given.get("colour_share", 0.0) <= 1:
        raise UserError(f"--colour_share is a share of captions in [0, 1], got {args.colour_share}.")
    if "init" in given:
        given["init"] = str(Path(given["init"]).expanduser().resolve())
        if given.get("steps", [0])[0] != 0:
            raise UserError(f"--init keeps {args.init}'s VAE, so there is no VAE phase: give --steps 0 N.")
    return merge_recipe(given, stored, default_recipe)


def merge_recipe(given: dict, stored: dict | None, defaults: Callable[[dict], dict]) -> dict:
    """The run's recipe: the defaults with the options `given`, or, resuming, the checkpoint's, which they must match.

    Resuming may raise the UNet step count (train on); everything else is fixed by the checkpoint."""
    if stored is None:
        recipe = defaults(given)
        recipe.update(given)
    else:
        recipe = {"held_out": [], "init": None, "colour_share": 0.0, **stored}  # what older checkpoints lack
        for key, value in given.items():
            if (value[0] != recipe[key][0]) if key == "steps" else (value != recipe[key]):
                raise UserError(f"--{key} {value} differs from the run being resumed ({recipe[key]}); leave it out.")
            recipe[key] = value
    if min(recipe["steps"]) < 0:
        raise UserError(f"--steps must be >= 0, got {recipe['steps']}.")
    return recipe


def load_checkpoint(out: Path, resume: bool) -> dict | None:
    """The checkpoint to continue from (--resume), or None for a new OUT; OUT is never overwritten."""
    file = out / ".cache" / "checkpoint.pt"
    if not resume:
        if out.exists():
            raise UserError(f"{out} already exists; pass --resume to continue its training, or choose a new folder.")
        return None
    if not file.is_file():
        raise UserError(f"nothing to resume: {file} does not exist; start a new run without --resume.")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or unsafe content
        raise UserError(f"cannot read checkpoint {file} ({type(exc).__name__}); delete {out} and start again.") from exc


def toy_vae(size: Size) -> Any:
    """SD's AutoencoderKL block types at the size's widths (4 latent channels)."""
    from diffusers import AutoencoderKL

    levels = len(size.vae["block_out_channels"])
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=size.resolution,
                         down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, **size.vae)


def toy_unet(size: Size, in_channels: int, cross_attention_dim: int) -> Any:
    """SD's UNet block types at the size's widths, on the VAE's latents; `in_channels` 4 (SD) or 8 (Zero-1-to-3)."""
    from diffusers import UNet2DConditionModel

    levels, unet_levels = len(size.vae["block_out_channels"]), len(size.unet["block_out_channels"])
    return UNet2DConditionModel(
        sample_size=size.resolution // 2 ** (levels - 1), in_channels=in_channels, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (unet_levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (unet_levels - 1),
        cross_attention_dim=cross_attention_dim, **size.unet)


def build_models(size: Size, tokenizer: Any, seed: int) -> dict[str, torch.nn.Module]:
    """SD 1.x block types at toy widths: VAE, text encoder, and a UNet attending to the text states."""
    torch.manual_seed(seed)
    vae = toy_vae(size)
    text_encoder = clip_text_encoder(tokenizer, **size.text)
    unet = toy_unet(size, 4, size.text["width"])
    return {"vae": vae, "text_encoder": text_encoder, "unet": unet}


def check_prior(prior: Path, resolution: int, flag: str = "--prior") -> dict[str, dict[str, str]]:
    """The toy prior's world ({objects, held_out}), after checking that it is a toy Stable Diffusion folder at the
    size's resolution (its VAE is reused, so the latents must be the same)."""
    from nerf.pipeline import training_resolution

    needed = ("model_index.json", "vae/config.json", "unet/config.json", "text_encoder/config.json")
    missing = [name for name in needed if not (prior / name).is_file()]
    if missing:
        raise UserError(f"{flag} {prior} is not a toy Stable Diffusion prior (no {missing[0]}); give a folder written "
                        "by scripts/train-toy-prior.py.")
    found = training_resolution(str(prior))
    if found != resolution:
        raise UserError(f"{flag} {prior} works at {found} px, this size at {resolution} px; train both at one --size.")
    training_world, held_out = load_world(prior)
    return {"objects": training_world, "held_out": held_out}


def check_same_world(prior: Path, resolution: int, objects: list[ToyObject], held_out: list[ToyObject], flag: str,
                     fix: str) -> None:
    """`check_prior`, and that the prior was trained on exactly these training and held-out instances."""
    mine = {"objects": {o.source: o.word for o in objects}, "held_out": {o.source: o.word for o in held_out}}
    if check_prior(prior, resolution, flag) != mine:
        raise UserError(f"{flag} {prior} was trained on another world (its objects.json); {fix}.")


def load_prior_weights(models: dict[str, torch.nn.Module], prior: Path) -> None:
    """Copy a toy prior folder's VAE, text encoder and UNet weights (fp16 on disk) into `models` of the same size."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    loaders = {"vae": AutoencoderKL, "text_encoder": CLIPTextModel, "unet": UNet2DConditionModel}
    for name, loader in loaders.items():
        try:
            weights = loader.from_pretrained(prior, subfolder=name).float().state_dict()
            models[name].load_state_dict(weights)
        except (OSError, ValueError, RuntimeError) as exc:  # unreadable, or other widths than this size's
            raise UserError(f"--init {prior}: its {name} does not fit this --size ({type(exc).__name__}); give a "
                            "prior trained at the same --size.") from None


def offline_tokenizer() -> Any:
    """The offline BPE tokenizer of the toy world's words (sd_parts.CORPUS)."""
    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer_files(Path(folder))
        return load_tokenizer(Path(folder))


def vae_loss(vae: Any, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """L1 reconstruction of posterior samples plus SD's tiny KL term (keeps the posterior's variance finite)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * eps
    return (vae.decode(z).sample - x).abs().mean() + KL_WEIGHT * posterior.kl().mean() / x[0].numel()


@torch.no_grad()
def encode_views(vae: Any, images: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, float]:
    """Posterior moments of every view, and the scaling factor that gives the latents unit std (SD's recipe)."""
    moments = torch.cat([vae.encode(images[i:i + chunk].float() / 127.5 - 1).latent_dist.parameters
                         for i in range(0, len(images), chunk)])
    return moments, 1.0 / moments.chunk(2, 1)[0].std().item()


def noisy_latents(alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor,
                  t: torch.Tensor) -> torch.Tensor:
    """DDPM's forward process q(x_t | x_0) (what DDPMScheduler.add_noise computes), as plain tensor algebra."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def unet_loss(text_encoder: Any, unet: Any, alphas_cumprod: torch.Tensor, latents: torch.Tensor,
              noise: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """SD's denoising loss: epsilon prediction at timestep t, text states from the trained encoder."""
    states = text_encoder(ids)[0]
    predicted = unet(noisy_latents(alphas_cumprod, latents, noise, t), t, encoder_hidden_states=states).sample
    return F.mse_loss(predicted.float(), noise)


def compiled(fn: Callable[..., torch.Tensor], mode: str) -> Callable[..., torch.Tensor]:
    """`fn` through torch.compile (`mode` "off": as is). The tiny networks are bound by kernel launches, which
    compiling (and reduce-overhead's CUDA graphs) removes; a compile failure falls back to `fn` with a warning."""
    if mode == "off":
        return fn
    fast = torch.compile(fn, mode=None if mode == "default" else mode)
    state = {"fn": fast, "checked": False}

    def call(*args: torch.Tensor) -> torch.Tensor:
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are no longer read
        if state["checked"]:
            return state["fn"](*args)
        try:
            out = fast(*args)
        except Exception as exc:  # an inductor or graph-capture failure costs speed, never the run
            print(f"warning: torch.compile failed ({type(exc).__name__}: {exc}); training eagerly", file=sys.stderr)
            state["fn"] = fn
            out = fn(*args)
        state["checked"] = True
        return out

    return call


@dataclass
class Phase:
    """One training phase: its loss, trained parameters, optimizer, and (UNet phase) the averaged copy saved."""

    name: str
    total: int
    loss: Callable[[torch.Generator], torch.Tensor]
    params: list[torch.nn.Parameter]
    lr: float
    warmup: int
    ema: list[torch.Tensor] = field(default_factory=list)
    bf16: bool = False  # bf16 autocast on CUDA (fp32 weights), as SD's mixed-precision training; CPU stays fp32

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.AdamW(self.params, self.lr, fused=self.params[0].is_cuda)

    def step(self, step: int, generator: torch.Generator) -> torch.Tensor:
        """One optimisation step (`step` counts from 0): warm-up LR, clipped gradients, EMA update."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * min(1.0, (step + 1) / self.warmup)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss(generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        if self.ema:
            decay = min(EMA_DECAY, (2 + step) / (11 + step))
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
        return loss.detach().clone()  # a compiled step's CUDA-graph output is overwritten by the next step


def run_phase(phase: Phase, state: dict, generator: torch.Generator, deadline: float,
              checkpoint: Callable[[], None]) -> bool:
    """Optimise until `phase.total` steps or the deadline; True when the phase is complete."""
    bar = tqdm(total=phase.total, initial=state["step"], desc=phase.name)
    while state["step"] < phase.total and time.monotonic() < deadline:
        loss = phase.step(state["step"], generator)
        state["step"] += 1
        if state["step"] % 10 == 0 or state["step"] == phase.total:
            bar.set_postfix(loss=f"{loss.item():.4f}")  # a GPU sync, so not every step
        bar.update(1)
        if state["step"] % CHECKPOINT_EVERY == 0:
            checkpoint()
    bar.close()
    return state["step"] >= phase.total


class Run:
    """One training run into OUT: the VAE phase, then the UNet phase, checkpointed and resumable."""

    trained = ("unet", "text_encoder")  # the networks of the UNet phase, saved as their EMA

    def __init__(self, out: Path, recipe: dict, objects: list[ToyObject], held_out: list[ToyObject], views: Views,
                 tokenizer: Any, device: torch.device, started: float, compile: str = "off",
                 size: Size | None = None) -> None:
        self.compile = compile  # torch.compile mode of the loss functions, "off" for eager
        self.held_out = held_out  # instances kept from training, listed in objects.json for evaluation
        self.out, self.recipe, self.objects, self.views, self.tokenizer = out, recipe, objects, views, tokenizer
        self.device, self.size = device, size or SIZES[recipe["size"]]
        self.models = {k: m.to(device) for k, m in self.build_models().items()}
        self.images = views.images.to(device)
        self.weights = (1.0 / torch.bincount(views.objects).double())[views.objects]  # objects equally often
        self.generator = torch.Generator().manual_seed(recipe["seed"] + 1)  # the views draw from `seed` itself
        self.state = {"phase": "vae", "step": 0, "seconds": 0.0}
        self.started = started  # wall time counts from the start of the command, views included
        self.phase: Phase | None = None
        self.scale = 1.0

    def build_models(self) -> dict[str, torch.nn.Module]:
        """The networks at the recipe's size and seed, with the weights of the --init prior when there is one."""
        models = build_models(self.size, self.tokenizer, self.recipe["seed"])
        if self.recipe.get("init"):
            load_prior_weights(models, Path(self.recipe["init"]))
        return models

    @property
    def latent_side(self) -> int:
        return self.size.resolution // 2 ** (len(self.size.vae["block_out_channels"]) - 1)

    def restore(self, stored: dict) -> None:
        for name, module in self.models.items():
            module.load_state_dict(stored["models"][name])
        self.state = {key: stored[key] for key in ("phase", "step", "seconds")}
        self.generator.set_state(stored["generator"])

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, batch, replacement=True, generator=generator)

    def vae_phase(self) -> Phase:
        vae, batch, side = self.models["vae"], self.size.batch[0], self.latent_side
        loss = compiled(lambda x, eps: vae_loss(vae, x, eps), self.compile)

        def draw(g: torch.Generator) -> torch.Tensor:
            x = self.images[self.draw(batch, g).to(self.device)].float() / 127.5 - 1
            return loss(x, torch.randn((batch, 4, side, side), generator=g).to(self.device))

        return Phase("vae", self.recipe["steps"][0], draw, list(vae.parameters()), self.size.lr[0], self.size.warmup,
                     bf16=False)

    def unet_phase(self) -> Phase:
        from diffusers import DDPMScheduler

        moments, self.scale = encode_views(self.models["vae"], self.images)
        texts = caption_ids(self.tokenizer, self.objects, self.views, self.recipe.get("colour_share", 0.0))
        texts = texts.to(self.device)
        alphas = DDPMScheduler(**sd15_schedule()).alphas_cumprod.to(self.device)
        steps, batch = len(alphas), self.size.batch[1]
        loss = compiled(lambda *tensors: unet_loss(self.models["text_encoder"], self.models["unet"], alphas,
                                                   *tensors), self.compile)

        def draw(g: torch.Generator) -> torch.Tensor:
            """A batch of (latent sample, noise, timestep, caption of a drawn context), drawn on the CPU generator."""
            idx = self.draw(batch, g).to(self.device)
            sample, noise, t = self.noisy_draw(moments[idx], steps, g)
            return loss(sample, noise, t, texts.draw(idx, g))

        return self.trained_phase(draw)

    def noisy_draw(self, moments: torch.Tensor, steps: int,
                   g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scaled posterior sample, noise, timestep) of each view's posterior `moments`, drawn on the CPU `g`."""
        mean, logvar = moments.chunk(2, 1)
        sample = mean + (0.5 * logvar.clamp(-30, 20)).exp() * torch.randn(mean.shape, generator=g).to(self.device)
        noise = torch.randn(mean.shape, generator=g).to(self.device)
        t = torch.randint(0, steps, (len(moments),), generator=g).to(self.device)
        return sample * self.scale, noise, t

    def trained_phase(self, loss: Callable[[torch.Generator], torch.Tensor]) -> Phase:
        """The UNet phase over the `trained` networks with `loss`: EMA kept, bf16 autocast on CUDA."""
        params = [p for name in self.trained for p in self.models[name].parameters()]
        return Phase("unet", self.recipe["steps"][1], loss, params, self.size.lr[1], self.size.warmup,
                     [p.detach().clone() for p in params], bf16=self.device.type == "cuda")

    def enter(self, phase: Phase, stored: dict | None) -> Phase:
        """Make `phase` current, with the optimizer and EMA of the checkpoint when it stopped inside it."""
        if stored is not None and stored["phase"] == phase.name:
            phase.optimizer.load_state_dict(stored["optimizer"])
            torch._foreach_copy_(phase.ema, [t.to(self.device) for t in stored["ema"]])
        self.phase = phase
        return phase

    def checkpoint(self) -> None:
        assert self.phase is not None
        now = time.monotonic()
        self.state["seconds"] += now - self.started
        self.started = now
        data = {**self.state, "recipe": self.recipe, "generator": self.generator.get_state(),
                "models": {name: module.state_dict() for name, module in self.models.items()},
                "optimizer": self.phase.optimizer.state_dict(), "ema": self.phase.ema}
        write_atomic(self.out / ".cache" / "checkpoint.pt", lambda tmp: torch.save(data, tmp))

    def train(self, stored: dict | None, deadline: float) -> bool:
        """Both phases up to their step counts or the deadline; True when training is complete."""
        if self.state["phase"] == "vae":
            vae = self.enter(self.vae_phase(), stored)
            if not run_phase(vae, self.state, self.generator, deadline, self.checkpoint):
                return False
            self.state.update(phase="unet", step=0)
            stored = None
        unet = self.enter(self.unet_phase(), stored)
        return run_phase(unet, self.state, self.generator, deadline, self.checkpoint)

    def save(self) -> None:
        """Checkpoint, model folder and model card, as far as training got."""
        assert self.phase is not None
        self.checkpoint()
        in_vae = self.state["phase"] == "vae"
        if in_vae:
            self.scale = encode_views(self.models["vae"], self.images)[1]
        trained = {k: copy.deepcopy(self.models[k]).cpu() for k in self.trained}
        if not in_vae:  # the saved networks of the UNet phase are the EMA weights
            with torch.no_grad():
                torch._foreach_copy_([p for m in trained.values() for p in m.parameters()], self.phase.ema)
        vae = copy.deepcopy(self.models["vae"]).cpu()
        vae.register_to_config(scaling_factor=self.scale)
        self.write_folder(vae, trained)
        done = (self.state["step"], 0) if in_vae else (self.recipe["steps"][0], self.state["step"])
        self.write_card(done)

    def write_folder(self, vae: Any, trained: dict[str, torch.nn.Module]) -> None:
        """The model folder (fp16 safetensors) from the VAE and the UNet phase's networks."""
        save_fp16_pipeline(self.out, vae, trained["text_encoder"], self.tokenizer, trained["unet"])

    def write_card(self, done: tuple[int, int]) -> None:
        write_card(self.out, self.recipe, self.objects, self.held_out, self.views, (self.size.resolution,
                   self.latent_side), done, self.state["seconds"], device_label(self.device))


def device_label(device: torch.device) -> str:
    """"cpu", or "cuda (the card's name)": a card's training record names the card its time was measured on."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def choose_device(name: str | None) -> torch.device:
    """The device asked for (default: CUDA when there is one), with TF32 matmuls on CUDA."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu.")
    torch.backends.cuda.matmul.allow_tf32 = True
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def compile_mode(option: str, device: torch.device) -> str:
    """--compile auto: reduce-overhead (CUDA graphs) on CUDA, off on the CPU."""
    return ("reduce-overhead" if device.type == "cuda" else "off") if option == "auto" else option


def start(args: argparse.Namespace) -> tuple[float, float, dict | None]:
    """(start time, deadline of --max_minutes, the checkpoint to resume or None), before OUT is touched."""
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise UserError(f"--max_minutes must be > 0, got {args.max_minutes}.")
    started = time.monotonic()
    deadline = started + 60 * args.max_minutes if args.max_minutes else float("inf")
    return started, deadline, load_checkpoint(args.out, args.resume)


def finish(run: Run, stored: dict | None, deadline: float, args: argparse.Namespace, what: str) -> None:
    """Restore the checkpoint, train up to the steps or the deadline, save whatever was reached."""
    if stored is not None:
        run.restore(stored)
    finished = run.train(stored, deadline)
    run.save()
    note = "" if finished else f" (stopped after {args.max_minutes} min; --resume continues)"
    print(f"{what} written to {args.out}{note}")


def train(args: argparse.Namespace) -> None:
    """Check everything the user gave before OUT is touched, then train, checkpoint and save."""
    started, deadline, stored = start(args)
    recipe = settings(args, stored["recipe"] if stored else None)
    objects = [o for spec in recipe["objects"] for o in parse_objects(spec)]
    objects += [parse_renders(spec) for spec in recipe["renders"]]
    if not objects:
        raise UserError("no objects to train on: give --objects family:seeds=word ... and/or --renders DIR=word ...")
    held_out = held_out_objects(recipe["held_out"], objects)
    tokenizer = offline_tokenizer()
    check_words(objects, tokenizer)
    if recipe["init"] and stored is None:
        check_same_world(Path(recipe["init"]), SIZES[recipe["size"]].resolution, objects, held_out, "--init",
                         "give exactly its --objects and --held_out")
    device = choose_device(args.device)
    size = SIZES[recipe["size"]]
    views = cached_views(args.out, objects, size.resolution, size.views, recipe["seed"], device)
    mode = compile_mode(args.compile, device)
    run = Run(args.out, recipe, objects, held_out, views, tokenizer, device, started, mode)
    finish(run, stored, deadline, args, "toy prior")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=USAGE)
    p.add_argument("out", type=Path, help="output folder (a new one, or an unfinished one with --resume)")
    p.add_argument("--objects", nargs="*", default=None, metavar="FAMILY:SEEDS=WORD",
                   help=f"procedural classes: a word for seeds 3, 0-11 or 1,4,7 of a family (default: "
                        f"{' '.join(DEFAULT_OBJECTS)}; none: renders only)")
    p.add_argument("--renders", nargs="+", default=None, metavar="DIR=WORD",
                   help="also folders of RGBA renders with cameras.json, several per word allowed "
                        "(see nerf/toy_models/world.py)")
    p.add_argument("--held_out", nargs="*", default=None, metavar="FAMILY:SEEDS",
                   help=f"instances kept from training for evaluation, named by their family's word (default with "
                        f"the default objects: {' '.join(DEFAULT_HELD_OUT)})")
    p.add_argument("--size", choices=tuple(SIZES), default=None, help="gpu (default): 64x64 images; cpu: 32x32 (tests)")
    p.add_argument("--steps", nargs=2, type=int, default=None, metavar=("VAE", "UNET"),
                   help="training steps (default: " + ", ".join(f"{' '.join(map(str, size.steps))} with --size {name}"
                                                      for name, size in SIZES.items()) + ")")
    p.add_argument("--init", type=Path, default=None, metavar="PRIOR",
                   help="start from a toy prior of the same world and size: its VAE kept (no VAE phase, --steps 0 N), "
                        "its UNet and text encoder trained on with this recipe's captions")
    p.add_argument("--colour_share", type=float, default=None, metavar="SHARE",
                   help="share of the prompt and template captions that name the instance's main colours before its "
                        "word (default 0; see nerf/toy_models/world.py)")
    add_run_flags(p)
    return p.parse_args(argv)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags every toy-model trainer shares: seed, resuming, device, time limit and compiling."""
    p.add_argument("--seed", type=int, default=None, help="seed of views, initial weights and batches (0)")
    p.add_argument("--resume", action="store_true", help="continue the training in OUT")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--max_minutes", type=float, default=None, help="stop (and save) after this many minutes")
    p.add_argument("--compile", choices=("auto", "off", "default", "reduce-overhead"), default="auto",
                   help="torch.compile the training losses (auto: reduce-overhead, i.e. with CUDA graphs, on CUDA; "
                        "off on the CPU, where compiling costs more than it saves at the test sizes)")


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    train(parse_args(argv))
    return 0
