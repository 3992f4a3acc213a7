"""Check that a toy prior knows its world: sample every word from every side with diffusers' own pipeline and score
each sample against ground-truth renders of that object from that side, of other objects, and from other sides.

    python scripts/check-toy-prior.py [PRIOR] [--out DIR] [--samples N] [--steps S] [--views V] [--seed S]
    python scripts/check-toy-prior.py [PRIOR] --token EMBEDS --object FAMILY:SEED=WORD --initializer WORD
    python scripts/check-toy-prior.py [PRIOR] --contexts [--views V] [--device cuda]
    python scripts/check-toy-prior.py --zero123 MODEL [--views V] [--steps S] [--seed S] [--device cuda]
    python scripts/check-toy-prior.py PRIOR --joint ZERO123 [--seed S]
    python scripts/check-toy-prior.py PRIOR --fidelity --object FAMILY:SEED=WORD [--token EMBEDS] [--views V]

PRIOR is a folder written by scripts/train-toy-prior.py (default: examples/toy-prior). For each object (procedural
ones only: they can be rendered again) and each of the front, side, back and overhead prompts, N samples are drawn
with StableDiffusionPipeline at S inference steps (its default, 50) and guidance 7.5. A sample's score against an
(object, side) pair is the best PSNR over V ground-truth renders of that object whose camera falls in that side's
bucket (main.py's camera distribution), and the mask IoU of that best view (object = not white). The report gives,
per object and side: the score with the true word and side, with a wrong word (the same side, other objects; mean),
and from a wrong side (the same object, other sides; mean). OUT gets check.json and samples.png (per row: an object
and side; the samples, then the nearest ground-truth view of each).

With --token, a learned token (textual_inversion.py's learned_embeds) is checked instead: the prior's denoising
loss on V held-out renders of --object (random training cameras, each captioned with main.py's prompt for its
side), with the object named by its true word, by the initializer word and by the token; noise and timesteps are
shared, so the three losses differ by the text alone. A token that learned the object scores near the true word.

With --contexts, the prior's held-out instances (objects.json) are checked: the denoising loss on V renders of each,
captioned in main.py's context (the prompt with the view's suffix) and in textual inversion's (its object templates),
each with the class's true word, with every other class's word (mean) and with the empty caption. A prior that knows
its classes scores the true word clearly below the wrong words in both contexts, and below the empty caption (by
less: a noisy view mostly shows its class already). In main.py's context the true word also comes with the
instance's colours (named from its renders) and with other colours: a prior whose text reaches an instance's look
scores its true colours below the word alone and the other colours above it.

With --zero123, a toy Zero-1-to-3 (scripts/train-toy-zero123.py) is checked instead (`nerf.toy_models.zero123_check`):
on its held-out instances, the denoising loss of V views with the true and with wrong relative cameras, of the
input view at the zero camera and at other cameras, and the PSNR against the input view of views sampled (S steps)
at the zero camera and at turned ones. OUT gets zero123.json.

With --joint, the class prior PRIOR and a toy Zero-1-to-3 are compared as `--guidance sd+zero123` combines them
(`nerf.toy_models.joint_check`): at renders of another object, each prior's SDS direction towards the true render,
the angle between the two, their weighted sum's direction and the ratio of their weighted sizes. OUT gets joint.json.

With --fidelity, where score distillation pulls a true render of --object (`nerf.toy_models.fidelity`): the prior's
one-step estimate of the clean view from a noisy copy, decoded and compared with the truth over the object's pixels
(PSNR, and the error of the object's mean colour), per --timesteps and --guidance_scales, with the true word, the
empty prompt and (with --token) the learned token; V (default 8) random training cameras, 2 noise draws each. OUT
gets fidelity.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.pipeline import training_resolution as model_resolution
from nerf.fileio import write_text_atomic
from nerf.scenes.procedural import make_scene
from nerf.scenes.raytrace import over_background, render_rgba
from nerf.toy_models import fidelity
from nerf.visualize import save_png
from nerf.toy_models.world import (
    HUE_WORDS, captions, class_words, colour_words, described, load_world, parse_object, render_object,
    template_captions, training_cameras)

REPO = Path(__file__).resolve().parents[2]
SIDES = {"front": 0, "side": 1, "back": 2, "overhead": 4}  # prompt suffix -> direction bucket (DIRECTION_NAMES)
WHITE_THRESHOLD = 0.92  # a pixel with every channel above this is background (images are composited on white)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prior", type=Path, nargs="?", default=REPO / "examples" / "toy-prior")
    p.add_argument("--out", type=Path, default=Path("outputs/toy-prior-check"))
    p.add_argument("--samples", type=int, default=2, help="samples per word and side")
    p.add_argument("--steps", type=int, default=50, help="inference steps (the pipeline's default)")
    p.add_argument("--views", type=int, default=None,
                   help="renders per object (default 240; 8 with --fidelity): the ground truth of the sample check; "
                        "with --token or --contexts, the views scored, less their input-camera copies (a tenth, at "
                        "least one); with --fidelity, the true renders scored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token", type=Path, help="learned_embeds file or textual_inversion.py output folder to check")
    p.add_argument("--object", help="the token's object, family:seed=word (with --token)")
    p.add_argument("--initializer", help="the word the token was learned from (with --token)")
    p.add_argument("--input_view", type=Path, metavar="RGBA",
                   help="with --token: the photo the token was learned from; adds its own denoising loss by context "
                        "and the SDS pull there by prompt")
    p.add_argument("--contexts", action="store_true",
                   help="denoising loss of the held-out instances by caption context and word")
    p.add_argument("--zero123", type=Path, metavar="MODEL",
                   help="check a toy Zero-1-to-3 folder (scripts/train-toy-zero123.py) instead of PRIOR")
    p.add_argument("--joint", type=Path, metavar="ZERO123",
                   help="with PRIOR: how the SDS directions of PRIOR (class word) and this toy Zero-1-to-3 combine at "
                        "the suite's scales and weights (nerf/toy_models/joint_check.py)")
    p.add_argument("--fidelity", action="store_true",
                   help="with --object: how much of the object's look SDS keeps at its true renders, by timestep "
                        "and guidance scale (nerf/toy_models/fidelity.py)")
    p.add_argument("--timesteps", type=int, nargs="+", default=list(fidelity.TIMESTEPS), help="of --fidelity")
    p.add_argument("--guidance_scales", type=float, nargs="+", default=list(fidelity.GUIDANCE_SCALES),
                   help="of --fidelity")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="of --token, --contexts, --zero123 and --fidelity")
    args = p.parse_args(argv)
    if args.views is None:
        args.views = 8 if args.fidelity else 240
    return args


def object_mask(images: Tensor) -> Tensor:
    """[..., 3, H, W] in [0, 1] -> [..., H, W] bool: not background white."""
    return (images < WHITE_THRESHOLD).any(dim=-3)


def best_match(sample: Tensor, references: Tensor) -> tuple[float, float, int]:
    """(PSNR, mask IoU, index) of the reference [N, 3, H, W] closest to `sample` [3, H, W] by PSNR."""
    mse = ((references - sample) ** 2).flatten(1).mean(1)
    best = int(mse.argmin())
    psnr = float(-10 * torch.log10(mse[best].clamp_min(1e-10)))
    a, b = object_mask(sample), object_mask(references[best])
    iou = float((a & b).sum() / (a | b).sum().clamp_min(1))
    return psnr, iou, best


def ground_truth(objects: list, resolution: int, views: int, seed: int) -> dict[tuple[int, int], Tensor]:
    """(object index, direction bucket) -> renders [N, 3, S, S] in [0, 1] from main.py's camera distribution."""
    table: dict[tuple[int, int], Tensor] = {}
    generator = torch.Generator().manual_seed(seed)
    for i, obj in enumerate(objects):
        images, directions = render_object(obj, resolution, views, generator, torch.device("cpu"))
        for side in SIDES.values():
            chosen = images[directions == side]
            if len(chosen) == 0:
                raise UserError(f"no ground-truth view of {obj.source} from bucket {side}; raise --views.")
            table[i, side] = chosen.float() / 255
    return table


def sample_all(pipe, words: list[str], samples: int, steps: int, seed: int) -> dict[tuple[int, int], Tensor]:
    """(object index, direction bucket) -> samples [N, 3, S, S] in [0, 1], prompted exactly as main.py does."""
    out = {}
    for i, word in enumerate(words):
        prompts = captions(word)
        for side in SIDES.values():
            generator = torch.Generator().manual_seed(seed + 1000 * i + side)
            images = pipe([prompts[side]] * samples, num_inference_steps=steps, generator=generator,
                          output_type="pt").images
            out[i, side] = images.float().cpu()
    return out


def score(samples: dict, truth: dict, count: int) -> dict:
    """Per object and side: true / wrong-word / wrong-side PSNR and IoU (means over the samples)."""
    report = {}
    for (i, side), images in samples.items():
        def mean(obj: int, s: int) -> tuple[float, float]:
            matches = [best_match(image, truth[obj, s])[:2] for image in images]
            return float(np.mean([m[0] for m in matches])), float(np.mean([m[1] for m in matches]))

        true = mean(i, side)
        wrong_word = np.mean([mean(j, side) for j in range(count) if j != i], axis=0)
        wrong_side = np.mean([mean(i, s) for s in SIDES.values() if s != side], axis=0)
        report[f"{i}:{side}"] = {"psnr": true[0], "iou": true[1], "wrong_word_psnr": float(wrong_word[0]),
                                 "wrong_word_iou": float(wrong_word[1]), "wrong_side_psnr": float(wrong_side[0]),
                                 "wrong_side_iou": float(wrong_side[1])}
    return report


def figure(samples: dict, truth: dict, path: Path) -> None:
    """samples.png: a row per (object, side): the samples, then the nearest ground-truth render of each."""
    rows = []
    for key, images in samples.items():
        nearest = [truth[key][best_match(image, truth[key])[2]] for image in images]
        rows.append(torch.cat([*images, *nearest], dim=2))
    save_png(path, torch.cat(rows, dim=1).permute(1, 2, 0))


def check(args: argparse.Namespace) -> dict:
    from diffusers import StableDiffusionPipeline

    table_file = args.prior / "objects.json"
    if not table_file.is_file():
        raise UserError(f"{args.prior} has no objects.json; give a folder written by scripts/train-toy-prior.py.")
    if min(args.samples, args.steps, args.views) < 1:
        raise UserError("--samples, --steps and --views must be >= 1.")
    table, _ = load_world(args.prior)
    objects = [parse_object(f"{source}={word}") for source, word in table.items() if ":" in source]
    if not objects:
        raise UserError(f"{args.prior} knows no procedural object; only those can be rendered again for the check.")
    pipe = StableDiffusionPipeline.from_pretrained(args.prior, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    truth = ground_truth(objects, resolution, args.views, args.seed)
    samples = sample_all(pipe, [o.word for o in objects], args.samples, args.steps, args.seed)
    per_view = score(samples, truth, len(objects))
    summary = {key: float(np.mean([v[key] for v in per_view.values()])) for key in next(iter(per_view.values()))}
    report = {"objects": [f"{o.source}={o.word}" for o in objects], "sides": SIDES, "samples": args.samples,
              "steps": args.steps, "per_view": per_view, "mean": summary}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "check.json", json.dumps(report, indent=2) + "\n")
    figure(samples, truth, args.out / "samples.png")
    return report


@torch.no_grad()
def denoising_losses(model: Path, texts: dict[str, list[str]], images: Tensor, seed: int, draws: int = 4,
                     token: tuple[str, Tensor] | None = None, device: str = "cpu") -> dict[str, float]:
    """The prior's epsilon-prediction loss on `images` [N, 3, S, S] in [0, 1] with each name's captions (one per
    image), over `draws` shared (noise, timestep) draws per image."""
    from nerf.guidance.stable_diffusion import add_learned_token, load_stable_diffusion

    parts = load_stable_diffusion(str(model), torch.device(device), fp16=False)
    if token is not None:
        add_learned_token(parts, *token)
    latents = parts.vae.encode(images.to(device) * 2 - 1).latent_dist.mean * parts.vae.config.scaling_factor
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((draws, *latents.shape), generator=generator).to(device)
    steps = torch.randint(20, 980, (draws, len(latents)), generator=generator).to(device)
    losses = {}
    for name, captions_ in texts.items():
        ids = parts.tokenizer(captions_, padding="max_length", max_length=parts.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids
        states = parts.text_encoder(ids.to(device))[0]
        total = 0.0
        for eps, t in zip(noise, steps):
            noisy = parts.scheduler.add_noise(latents, eps, t)
            total += float(F.mse_loss(parts.unet(noisy, t, encoder_hidden_states=states).sample, eps))
        losses[name] = total / draws
    return losses


def held_out_views(obj, resolution: int, views: int, seed: int) -> tuple[Tensor, Tensor]:
    """Renders of `obj` [N, 3, S, S] in [0, 1] from main.py's random training cameras (no input-camera copies: the
    input view is what a user gives, not what the check should measure) and their direction buckets."""
    generator = torch.Generator().manual_seed(seed + 7)  # other cameras than the prior's training views
    images, directions = render_object(obj, resolution, views, generator, torch.device("cpu"))
    keep = torch.arange(len(images)) >= max(1, round(views * 0.1))
    return images[keep].float() / 255, directions[keep]


def read_input_view(path: Path, resolution: int) -> Tensor:
    """An RGBA photo [1, 3, S, S] in [0, 1] over white, at the prior's resolution, as the prior sees an input view."""
    from PIL import Image

    try:
        image = Image.open(path).convert("RGBA").resize((resolution, resolution), Image.BICUBIC)
    except (OSError, ValueError) as exc:
        raise UserError(f"--input_view {path}: not a readable image ({exc}); give the RGBA input photo.") from exc
    rgba = torch.from_numpy(np.array(image)).float() / 255
    return (rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:]).permute(2, 0, 1)[None]


def embedding_report(model: Path, token: str, vector: Tensor, words: dict[str, str]) -> dict[str, float]:
    """The token's input-embedding norm and its cosine with each named word's row, beside those rows' norms: a
    single-image token tends to grow long, and where it points says which word it became."""
    from nerf.guidance.stable_diffusion import load_stable_diffusion

    parts = load_stable_diffusion(str(model), torch.device("cpu"), fp16=False)
    table = parts.text_encoder.get_input_embeddings().weight.detach()
    report = {"token norm": float(vector.norm()), "mean norm of the vocabulary": float(table.norm(dim=1).mean())}
    for name, word in words.items():
        row = table[parts.tokenizer(word, add_special_tokens=False).input_ids[0]]
        report[f"{name} norm"] = float(row.norm())
        report[f"cosine with {name}"] = float(F.cosine_similarity(vector.flatten(), row, dim=0))
    return report


def sds_pull(model: Path, image: Tensor, word: str | None, draws: int = 48, guidance_scale: float = 20.0,
             token: tuple[str, Tensor] | None = None, seed: int = 0) -> float:
    """The norm of the SDS pixel gradient at `image` (front prompt naming `word`, or empty), summed over `draws`
    noise and timestep draws: how hard score distillation pulls that view away from what it is. At a user's true
    input view a prior that knows the object should pull less than at another object's view."""
    from nerf.guidance.sds import SDSGuidance
    from nerf.guidance.stable_diffusion import add_learned_token, load_stable_diffusion

    parts = load_stable_diffusion(str(model), torch.device("cpu"), fp16=False)
    if token is not None:
        add_learned_token(parts, *token)
    prompts = [(text, "") for text in captions(word)] if word else [("", "")]
    guidance = SDSGuidance(parts, prompts, guidance_scale=guidance_scale)
    generator = torch.Generator().manual_seed(seed)
    pixels = image.clone().requires_grad_(True)
    for _ in range(draws):
        loss, _ = guidance(pixels, 0, generator=generator)
        loss.backward()
    return float(pixels.grad.norm())


def check_token(args: argparse.Namespace) -> dict:
    """What a learned token knows of --object: held-out denoising loss under main.py's prompt and under textual
    inversion's templates (true word, initializer, token, token scaled to the word's norm), the token's embedding,
    and with --input_view the input view's own loss in both contexts and the SDS pull there."""
    from nerf.guidance.stable_diffusion import load_learned_embeds

    if not args.object or not args.initializer:
        raise UserError("--token needs --object family:seed=word and --initializer WORD.")
    obj = parse_object(args.object)
    token, vector = load_learned_embeds(str(args.token))
    resolution = model_resolution(args.prior)
    input_view = read_input_view(args.input_view, resolution) if args.input_view is not None else None
    embedding = embedding_report(args.prior, token, vector, {"true word": obj.word, "initializer": args.initializer})
    scaled = vector * (embedding["true word norm"] / embedding["token norm"])
    names = {"true word": obj.word, "initializer": args.initializer, "token": token}
    contexts = {"prompt": lambda word, k, d: captions(word)[int(d)],
                "templates": lambda word, k, d: template_captions(word)[k % len(template_captions(word))]}
    images, directions = held_out_views(obj, resolution, args.views, args.seed)
    report = {"object": args.object, "initializer": args.initializer, "token": str(args.token),
              "views": len(images), "embedding": embedding, "held_out_loss": {}}
    for context, caption in contexts.items():
        texts = {name: [caption(word, k, d) for k, d in enumerate(directions)] for name, word in names.items()}
        losses = denoising_losses(args.prior, texts, images, args.seed, token=(token, vector), device=args.device)
        losses["token scaled to the word's norm"] = denoising_losses(
            args.prior, {"token": texts["token"]}, images, args.seed, token=(token, scaled), device=args.device)["token"]
        report["held_out_loss"][context] = losses
    report["denoising_loss"] = report["held_out_loss"]["prompt"]  # the summary line (main.py's context)
    if input_view is not None:
        copies = input_view.expand(len(template_captions("x")), -1, -1, -1)  # one copy per template, shared noise
        front = torch.zeros(len(copies), dtype=torch.long)
        report["input_view_loss"] = {
            context: denoising_losses(args.prior, {name: [caption(word, k, d) for k, d in enumerate(front)]
                                                   for name, word in names.items()},
                                      copies, args.seed, token=(token, vector), device=args.device)
            for context, caption in contexts.items()}
        report["input_view_sds_pull"] = {name: sds_pull(args.prior, input_view, word, token=(token, vector))
                                         for name, word in {**names, "empty": None}.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "token.json", json.dumps(report, indent=2) + "\n")
    return report


def other_colours(colours: tuple[str, ...]) -> tuple[str, ...]:
    """As many colour words as `colours`, each the one opposite on HUE_WORDS's circle (none of `colours`)."""
    names = list(HUE_WORDS)
    free = [n for n in names if n not in colours]
    opposite = [names[(names.index(c) + len(names) // 2) % len(names)] for c in colours]
    return tuple(dict.fromkeys(o if o in free else free[0] for o in opposite))


def context_texts(word: str, others: list[str], directions: Tensor,
                  colours: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Captions of each view by (context, word): main.py's prompt for its side, or template k mod T for view k;
    with `colours`, main.py's prompt also with the word described by them and by other colours."""
    def prompt(w: str) -> list[str]:
        return [captions(w)[int(d)] for d in directions]

    def template(w: str) -> list[str]:
        table = template_captions(w)
        return [table[k % len(table)] for k in range(len(directions))]

    texts = {"empty": [""] * len(directions)}
    for context, make in (("prompt", prompt), ("template", template)):
        texts[f"{context}/true"] = make(word)
        texts.update({f"{context}/wrong:{w}": make(w) for w in others})
    if colours:
        texts["prompt/true colours"] = prompt(described(word, colours))
        texts["prompt/other colours"] = prompt(described(word, other_colours(colours)))
    return texts


def check_contexts(args: argparse.Namespace) -> dict:
    """Per held-out instance and context: the loss with the true word, the mean over wrong words, the empty one."""
    training, held_out = load_world(args.prior)
    if not held_out:
        raise UserError(f"{args.prior} lists no held-out instances; train it with --held_out (train-toy-prior.py).")
    words = class_words([parse_object(f"{s}={w}") for s, w in training.items() if ":" in s])
    resolution, rows = model_resolution(args.prior), {}
    for source, word in held_out.items():
        obj = parse_object(f"{source}={word}")
        images, directions = held_out_views(obj, resolution, args.views, args.seed)
        colours = colour_words(images)
        losses = denoising_losses(args.prior, context_texts(word, [w for w in words if w != word], directions,
                                                            colours), images, args.seed, device=args.device)
        row = {"empty": losses["empty"]}
        for context in ("prompt", "template"):
            row[f"{context} true"] = losses[f"{context}/true"]
            row[f"{context} wrong"] = float(np.mean([v for k, v in losses.items() if k.startswith(f"{context}/wrong")]))
        row.update({f"prompt {name}": losses[f"prompt/{name}"] for name in ("true colours", "other colours")
                    if colours})
        rows[f"{source}={word}"] = row
    keys = dict.fromkeys(key for row in rows.values() for key in row)  # colours only where an instance has a hue
    mean = {key: float(np.mean([row[key] for row in rows.values() if key in row])) for key in keys}
    report = {"prior": str(args.prior), "views": args.views, "per_instance": rows, "mean": mean}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "contexts.json", json.dumps(report, indent=2) + "\n")
    return report

PROMPTS = ("true", "shuffled", "empty", "token")  # how sds_alignment names the object in main.py's prompt


@dataclass(frozen=True)
class Alignment:
    """One SDS-direction measurement: the instance, the wrong render's source and how the prompt names it."""

    instance: str  # family:seed=word, the object whose render SDS should pull towards
    wrong: str  # family:seed of the object rendered instead
    prompt: str = "true"  # a PROMPTS entry; "shuffled" uses another class's word, "token" `learned_embeds`
    random_unet: bool = False  # replace the UNet's weights by random ones (a prior that knows nothing)
    views: int = 4
    draws: int = 16
    guidance_scale: float = 20.0
    seed: int = 0
    learned_embeds: str | None = None  # a textual-inversion output, for prompt "token"


def sds_alignment(prior: Path, setting: Alignment, other_word: str = "dog") -> float:
    """The cosine between (true render - wrong render) and the SDS pixel gradient at the wrong render (the descent
    direction, averaged over `draws` noise and timestep draws), averaged over `views` random training cameras.

    The wrong render is another object seen from the same camera, so an SDS that knows the prompted object pulls the
    pixels towards its true look. A prompt that names the wrong render's own class (shuffled, `other_word`) pulls
    towards what is rendered, and a UNet that learned nothing has no direction; an empty prompt still points partly
    the right way (the unconditional model pulls any render towards the objects it knows)."""
    from nerf.guidance.sds import SDSGuidance
    from nerf.guidance.stable_diffusion import add_learned_token, load_learned_embeds, load_stable_diffusion

    if setting.prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {setting.prompt!r}; choose one of {PROMPTS}")
    obj = parse_object(setting.instance)
    family, _, seed = setting.wrong.partition(":")
    parts = load_stable_diffusion(str(prior), torch.device("cpu"), fp16=False)
    token = None
    if setting.prompt == "token":
        if setting.learned_embeds is None:
            raise ValueError('prompt "token" needs learned_embeds')
        token, vector = load_learned_embeds(setting.learned_embeds)
        add_learned_token(parts, token, vector)
    if setting.random_unet:
        torch.manual_seed(setting.seed)
        parts.unet = type(parts.unet).from_config(parts.unet.config)
    resolution = model_resolution(prior)
    generator = torch.Generator().manual_seed(setting.seed)
    cams = training_cameras(setting.views, resolution, generator)
    true = over_background(render_rgba(make_scene(obj.family, obj.seed), cams)).permute(0, 3, 1, 2)
    wrong = over_background(render_rgba(make_scene(family, int(seed)), cams)).permute(0, 3, 1, 2)
    word = {"true": obj.word, "shuffled": other_word, "empty": None, "token": token}[setting.prompt]
    prompts = [(text, "") for text in captions(word)] if word else [("", "")]
    guidance = SDSGuidance(parts, prompts, guidance_scale=setting.guidance_scale)
    cosines = []
    for k in range(setting.views):
        image = wrong[k:k + 1].clone().requires_grad_(True)
        direction = int(cams.directions[k]) if word else 0
        for _ in range(setting.draws):
            loss, _ = guidance(image, direction, generator=generator)
            loss.backward()
        cosines.append(float(F.cosine_similarity(-image.grad.flatten(), (true[k] - wrong[k]).flatten(), dim=0)))
    return float(np.mean(cosines))


def check_zero123(args: argparse.Namespace) -> int:
    """--zero123: the camera check and the samples of `zero123_check`, printed and written to OUT/zero123.json."""
    from nerf.toy_models import zero123_check

    if min(args.views, args.steps) < 1:
        raise UserError("--views and --steps must be >= 1.")
    report = zero123_check.camera_check(args.zero123, views=args.views, seed=args.seed, device=args.device)
    report["samples_psnr"] = zero123_check.sample_check(args.zero123, steps=args.steps, seed=args.seed,
                                                        device=args.device)
    for name, row in [*report["per_instance"].items(), ("mean", report["mean"])]:
        print(f"{name}: " + ", ".join(f"{k} {v:.5f}" for k, v in row.items()))
    for name, row in report["samples_psnr"].items():
        print(f"{name} samples, PSNR against the input view by azimuth: "
              + ", ".join(f"{k} deg {v:.2f} dB" for k, v in row.items()))
    print(f"wrote {zero123_check.write_report(args.out, report)}")
    return 0


def check_joint(args: argparse.Namespace) -> int:
    """--joint: `joint_check.joint_directions` on the held-out pairs, printed and written to OUT/joint.json."""
    from nerf.toy_models.joint_check import JointSetting, held_out_pairs, joint_directions

    rows = {f"{instance} at {wrong}": joint_directions(args.prior, args.joint, JointSetting(instance, wrong, seed=args.seed))
            for instance, wrong in held_out_pairs(args.joint)}
    mean = {key: float(np.mean([row[key] for row in rows.values()])) for key in next(iter(rows.values()))}
    for name, row in [*rows.items(), ("mean", mean)]:
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "joint.json"
    write_text_atomic(path, json.dumps({"prior": str(args.prior), "zero123": str(args.joint), "seed": args.seed,
                                        "per_pair": rows, "mean": mean}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def check_fidelity(args: argparse.Namespace) -> dict:
    """`nerf.toy_models.fidelity.fidelity_table` for --object (and --token), printed and written to fidelity.json."""
    from nerf.guidance.stable_diffusion import load_learned_embeds

    if not args.object:
        raise UserError("--fidelity needs --object family:seed=word (the instance whose true renders are scored).")
    if args.views < 1 or any(not 0 < t < 1000 for t in args.timesteps):
        raise UserError("--fidelity needs --views >= 1 and --timesteps in 1..999.")
    obj = parse_object(args.object)
    names: dict[str, str | None] = {"true word": obj.word, "empty": None}
    token = None
    if args.token is not None:
        token = load_learned_embeds(str(args.token))
        names["token"] = token[0]
    table = fidelity.fidelity_table(args.prior, obj, names, token, args.guidance_scales, args.timesteps,
                                    views=args.views, seed=args.seed, device=args.device)
    for name, by_scale in table.items():
        for scale, row in by_scale.items():
            print(f"{name}, guidance {scale}: " + " | ".join(
                f"t={t} {v['psnr']:.1f} dB, colour {v['colour_error']:.3f}" for t, v in row.items()))
    report = {"prior": str(args.prior), "object": args.object, "token": str(args.token) if token else None,
              "views": args.views, "table": table}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "fidelity.json", json.dumps(report, indent=2) + "\n")
    return report


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu.")
    if args.zero123 is not None:
        return check_zero123(args)
    if args.joint is not None:
        return check_joint(args)
    if args.fidelity:
        check_fidelity(args)
        return 0
    if args.contexts:
        report = check_contexts(args)
        for name, row in [*report["per_instance"].items(), ("mean", report["mean"])]:
            print(f"{name}: " + ", ".join(f"{k} {v:.5f}" for k, v in row.items()))
        return 0
    if args.token is not None:
        report = check_token(args)
        for context, losses in report["held_out_loss"].items():
            print(f"held-out denoising loss ({context}): " + ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
        print("embedding: " + ", ".join(f"{k} {v:.3f}" for k, v in report["embedding"].items()))
        for context, losses in report.get("input_view_loss", {}).items():
            print(f"input view loss ({context}): " + ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
        if "input_view_sds_pull" in report:
            print("SDS pull at the input view: " + ", ".join(f"{k} {v:.4g}"
                                                          for k, v in report["input_view_sds_pull"].items()))
        return 0
    report = check(args)
    mean = report["mean"]
    print(f"true word and side: PSNR {mean['psnr']:.2f} dB, IoU {mean['iou']:.3f}; wrong word: "
          f"{mean['wrong_word_psnr']:.2f} dB, {mean['wrong_word_iou']:.3f}; wrong side: "
          f"{mean['wrong_side_psnr']:.2f} dB, {mean['wrong_side_iou']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
