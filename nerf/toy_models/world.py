"""The toy world a toy prior learns: classes of objects, their words, the views main.py asks about, the captions.

A class is a word naming several instances: seeds of a procedural family (`family:SEEDS=word`, rendered here by
ray tracing) and/or folders of RGBA renders with a ``cameras.json`` (`DIR=word`, several folders per word allowed).
Held-out seeds of a family (`family:SEEDS`) are never rendered for training; evaluation reconstructs them, so the
prior is tested, like Stable Diffusion, on objects of a class it knows but instances it never saw.

Views are drawn from the camera distribution main.py samples for the prior (`random_cameras` with `DataOptions()`
defaults) plus, for INPUT_SHARE of a rendered instance's views, the input camera (main.py renders it with the
front prompt every 10th step). Captions come from three contexts, drawn per training sample with CAPTION_SHARES:
main.py's prompt with the word and the view's direction suffix, one of textual inversion's object templates with
the word ("a photo of a {}", ...), and the empty caption (classifier-free guidance). Images are on white.

With a colour share (`--colour_share`, 0 by default), that share of the prompt and template captions names the
instance's main colours before the word ("a photo of a red and blue robot"), named from its views. Why: a prior
whose captions only name the class has no text pathway to an instance's look, so no token learned by textual
inversion can ask it for "this" chair rather than "a" chair (measured: a token learned from 33 views of a held-out
instance came within 1 % of the class word's denoising loss). Stable Diffusion learned such a pathway from captions
that describe what they show.

cameras.json of a renders folder: ``{"frames": [{"file": "000.png", "theta": 75, "phi": 0, "radius": 1.8,
"fovy": 55}, ...]}`` -- polar angle and azimuth in degrees, as `nerf.cameras.fixed_cameras` takes them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from nerf.cameras import FRONT, CameraBatch, direction_prompts, fixed_cameras, random_cameras, view_direction
from nerf.errors import UserError
from nerf.fileio import write_atomic, write_text_atomic
from nerf.guidance.stable_diffusion import replace_token_placeholder
from nerf.options import DEFAULT_PROMPT, DataOptions
from nerf.scenes.procedural import FAMILIES, make_scene
from nerf.scenes.raytrace import over_background, render_rgba
from nerf.textual_inversion.dataset import OBJECT_TEMPLATES

DEFAULT_OBJECTS = ("primitive:0-11=ball", "union:0-11=robot", "nonconvex:0-11=cake", "thin:0-11=chair")
DEFAULT_HELD_OUT = ("primitive:100-103", "union:100-103", "nonconvex:100-103", "thin:100-103")
INPUT_SHARE = 0.1  # share of a rendered object's views taken from the input camera
# Caption contexts of a training sample. main.py's prompts carry the view (what SDS asks); the templates are where
# textual inversion learns its token, so the word must matter there too; empty captions train the unconditional
# branch of classifier-free guidance (SD's 10-20 %).
CAPTION_SHARES = {"prompt": 0.5, "template": 0.35, "empty": 0.15}
# The colour words of the tokenizer's corpus and their hues in degrees; an instance is described by the one or two
# that cover most of its coloured pixels (a second one when it covers at least SECOND_COLOUR of the first's pixels).
HUE_WORDS = {"red": 0.0, "orange": 30.0, "yellow": 60.0, "green": 120.0, "blue": 220.0, "purple": 275.0,
             "pink": 330.0}
SECOND_COLOUR = 0.25
MIN_CHROMA = 0.15  # max - min channel of a pixel that has a hue (the white background and grey shading have none)
CAMERA_BATCH = 16  # views per random_cameras draw (each draw has one FoV, as in main.py)
FRAME_KEYS = ("theta", "phi", "radius", "fovy")


@dataclass(frozen=True)
class ToyObject:
    """One instance of the toy world: a procedural scene or a renders folder, and its class word."""

    word: str
    family: str | None = None
    seed: int = 0
    folder: Path | None = None

    @property
    def source(self) -> str:
        return f"{self.family}:{self.seed}" if self.folder is None else str(self.folder)


@dataclass
class Views:
    """The fixed training set: images over white, their object, the view's direction bucket and, for rendered
    instances, the camera (an image-conditioned prior learns from the camera between two views)."""

    images: Tensor  # [N, 3, S, S] uint8
    objects: Tensor  # [N] index into the object list
    directions: Tensor  # [N] bucket id (nerf.cameras.DIRECTION_NAMES)
    poses: Tensor | None = None  # [N, 4, 4] camera-to-world; None when a renders folder is among the objects
    theta: Tensor | None = None  # [N] polar angle, degrees
    phi: Tensor | None = None  # [N] azimuth, degrees

    def cameras(self, index: Tensor) -> CameraBatch:
        """The cameras of views `index` (focal length not kept: only the pose is needed)."""
        if self.poses is None or self.theta is None or self.phi is None:
            raise UserError("these views have no cameras (renders folders); use procedural objects.")
        index = index.to(self.poses.device)
        return CameraBatch(self.poses[index], self.images.shape[-1], 0.0, self.directions.to(index.device)[index],
                           self.theta[index], self.phi[index])


def parse_seeds(text: str, spec: str, flag: str) -> list[int]:
    """`3`, `0-11` or `1,4,7` (ranges inclusive) -> the seeds, in order, each once."""
    seeds: list[int] = []
    try:
        for piece in text.split(","):
            low, dash, high = piece.strip().partition("-")
            seeds += list(range(int(low), int(high) + 1)) if dash else [int(low)]
    except ValueError:
        raise UserError(f"{flag} '{spec}': '{text}' is not seeds like 3, 0-11 or 1,4,7.") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"{flag} '{spec}': the seeds must be non-negative, distinct and at least one.")
    return seeds


def _family_and_seeds(scene: str, spec: str, flag: str) -> tuple[str, list[int]]:
    family, colon, seeds = scene.partition(":")
    if not colon:
        raise UserError(f"{flag} '{spec}' is not family:seeds (e.g. union:0-11).")
    if family not in FAMILIES:
        raise UserError(f"{flag} '{spec}': unknown scene family '{family}'; choose one of {', '.join(FAMILIES)}.")
    return family, parse_seeds(seeds, spec, flag)


def parse_objects(spec: str) -> list[ToyObject]:
    """`family:SEEDS=word` -> one ToyObject per seed; an unknown family or a malformed spec is a UserError."""
    scene, sep, word = spec.partition("=")
    if not sep or not word.strip():
        raise UserError(f"--objects '{spec}' is not family:seeds=word (e.g. union:0-11=robot).")
    family, seeds = _family_and_seeds(scene, spec, "--objects")
    return [ToyObject(word.strip(), family, seed) for seed in seeds]


def parse_object(spec: str) -> ToyObject:
    """`family:seed=word` -> the one ToyObject it names."""
    objects = parse_objects(spec)
    if len(objects) != 1:
        raise UserError(f"'{spec}' names {len(objects)} objects; give one seed (family:seed=word).")
    return objects[0]


def parse_renders(spec: str) -> ToyObject:
    """`DIR=word` -> ToyObject (the folder is checked when it is read)."""
    folder, sep, word = spec.rpartition("=")
    if not sep or not folder or not word.strip():
        raise UserError(f"--renders '{spec}' is not DIR=word (a folder of RGBA renders with cameras.json, a word).")
    return ToyObject(word.strip(), folder=Path(folder).expanduser())


def held_out_objects(specs: list[str], objects: list[ToyObject]) -> list[ToyObject]:
    """`family:SEEDS` -> the held-out instances, named by their family's training word; a seed the prior trains on,
    or a family without a word, is a UserError."""
    words = {o.family: o.word for o in objects if o.family is not None}
    trained = {(o.family, o.seed) for o in objects}
    held: list[ToyObject] = []
    for spec in specs:
        family, seeds = _family_and_seeds(spec, spec, "--held_out")
        if family not in words:
            raise UserError(f"--held_out '{spec}': no --objects instance of {family} names its word; add some.")
        for seed in seeds:
            if (family, seed) in trained:
                raise UserError(f"--held_out '{spec}': {family}:{seed} is also a training instance; a held-out seed "
                                "must be one the prior never sees.")
            held.append(ToyObject(words[family], family, seed))
    return held


def check_words(objects: list[ToyObject], tokenizer: Any) -> None:
    """Every word must be one token of the tokenizer, and every instance listed once."""
    for obj in objects:
        pieces = tokenizer.tokenize(obj.word)
        if len(pieces) != 1:
            raise UserError(f"the word '{obj.word}' of {obj.source} is {len(pieces)} tokens ({' '.join(pieces)}); "
                            f"pick a word of the tokenizer's corpus (nerf/toy_models/sd_parts.py CORPUS), "
                            "e.g. cup or robot.")
    sources = [obj.source for obj in objects]
    twice = sorted({s for s in sources if sources.count(s) > 1})
    if twice:
        raise UserError(f"{twice[0]} is listed twice; list each instance once.")


def class_words(objects: list[ToyObject]) -> list[str]:
    """The distinct words, in order of first appearance: the classes."""
    return list(dict.fromkeys(obj.word for obj in objects))


def captions(word: str) -> list[str]:
    """main.py's prompt for every direction bucket, with `word` in place of <token>."""
    text = replace_token_placeholder(DEFAULT_PROMPT, word)
    return [positive for positive, _ in direction_prompts(text, "", True, None)]


def template_captions(word: str) -> list[str]:
    """Textual inversion's object templates with `word` in place of the placeholder."""
    return [template.format(word) for template in OBJECT_TEMPLATES]


def colour_words(images: Tensor) -> tuple[str, ...]:
    """The one or two HUE_WORDS that name most coloured pixels of RGB `images` [N, 3, H, W] (uint8 or [0, 1]),
    most frequent first; none for an object without a hue."""
    rgb = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    r, g, b = rgb.unbind(1)
    chroma = rgb.amax(1) - rgb.amin(1)
    hue = torch.rad2deg(torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b))[chroma > MIN_CHROMA] % 360
    if hue.numel() == 0:
        return ()
    centres = torch.tensor(list(HUE_WORDS.values()))
    gap = (hue[:, None] - centres).abs()
    nearest = torch.minimum(gap, 360 - gap).argmin(1)
    counts = torch.bincount(nearest, minlength=len(centres))
    order = counts.argsort(descending=True).tolist()
    names = list(HUE_WORDS)
    return tuple(names[k] for k in order[:2] if counts[k] >= SECOND_COLOUR * counts[order[0]] and counts[k] > 0)


def described(word: str, colours: tuple[str, ...]) -> str:
    """`word` with its colours in front: "red and blue robot"."""
    return " ".join([" and ".join(colours), word]) if colours else word


def to_uint8(rgba: Tensor) -> Tensor:
    """Straight RGBA [B, H, W, 4] in [0, 1] -> RGB over white [B, 3, H, W] uint8."""
    return (over_background(rgba, 1.0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 3, 1, 2).cpu()


def training_cameras(count: int, size: int, generator: torch.Generator) -> CameraBatch:
    """`count` cameras of the distribution main.py samples for the prior (`DataOptions()` defaults)."""
    data = DataOptions()
    return random_cameras(count, size, radius_range=data.radius_range, fovy_range=data.fovy_range,
                          uniform_sphere_rate=data.uniform_sphere_rate, angle_overhead=data.angle_overhead,
                          angle_front=data.angle_front, generator=generator)


def input_camera(size: int) -> CameraBatch:
    """main.py's camera of the input view (`DataOptions()` defaults: --pose_angle, azimuth 0, --radius_rot)."""
    data = DataOptions()
    return fixed_cameras(data.pose_angle, torch.zeros(1), data.orbit_radius, data.default_fovy, size,
                         data.angle_overhead, data.angle_front)


def render_object_cameras(obj: ToyObject, size: int, count: int, generator: torch.Generator,
                          device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`count` views of a procedural scene: random training cameras and INPUT_SHARE input-camera copies, as
    (images, direction buckets, poses, polar angles, azimuths)."""
    scene = make_scene(obj.family, obj.seed)
    inputs = max(1, round(count * INPUT_SHARE))
    front = input_camera(size)
    images = [to_uint8(render_rgba(scene, front.to(device))).expand(inputs, -1, -1, -1)]
    # main.py's input-camera step always uses the front prompt
    cameras = [(torch.full((inputs,), FRONT), front.poses.expand(inputs, -1, -1), front.theta.expand(inputs),
                front.phi.expand(inputs))]
    for _ in range(math.ceil((count - inputs) / CAMERA_BATCH)):
        cams = training_cameras(CAMERA_BATCH, size, generator)
        images.append(to_uint8(render_rgba(scene, cams.to(device))))
        cameras.append((cams.directions, cams.poses, cams.theta, cams.phi))
    return (torch.cat(images)[:count], *(torch.cat(parts)[:count].cpu() for parts in zip(*cameras)))


def render_object(obj: ToyObject, size: int, count: int, generator: torch.Generator,
                  device: torch.device) -> tuple[Tensor, Tensor]:
    """`count` views of a procedural scene (`render_object_cameras`): images and direction buckets."""
    return render_object_cameras(obj, size, count, generator, device)[:2]


def read_frames(folder: Path) -> list[dict]:
    """cameras.json's frames, checked against the PNG files of the folder (one entry per image)."""
    file = folder / "cameras.json"
    if not file.is_file():
        raise UserError(f"--renders {folder} has no cameras.json; see nerf/toy_models/world.py for its format.")
    try:
        frames = json.loads(file.read_text(encoding="utf-8"))["frames"]
        frames = [{"file": str(f["file"]), **{k: float(f[k]) for k in FRAME_KEYS}} for f in frames]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{file} is malformed ({exc!r}); it needs frames with file, {', '.join(FRAME_KEYS)}.") from None
    listed, found = [f["file"] for f in frames], sorted(p.name for p in folder.glob("*.png"))
    missing = sorted(set(listed) - set(found)) or sorted(set(found) - set(listed))
    if missing or len(set(listed)) != len(listed) or not frames:
        what = f"{missing[0]} is only in one of them" if missing else "cameras.json lists no frame or one twice"
        raise UserError(f"--renders {folder}: cameras.json and the PNG files disagree ({what}).")
    return frames


def read_rgba(path: Path) -> Tensor:
    """A square RGBA PNG as straight RGBA [H, W, 4] in [0, 1]."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 3 or raw.shape[2] != 4:
        raise UserError(f"{path} is not an RGBA image; --renders folders hold RGBA PNGs (alpha = object mask).")
    if raw.shape[0] != raw.shape[1]:
        raise UserError(f"{path} is {raw.shape[1]}x{raw.shape[0]}; --renders images must be square.")
    rgba = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA).astype(np.float32) / float(np.iinfo(raw.dtype).max)
    return torch.from_numpy(rgba)


def load_renders(obj: ToyObject, size: int) -> tuple[Tensor, Tensor, int]:
    """A renders folder's images (resized to `size`), the direction buckets of their cameras, their own side."""
    data = DataOptions()
    if obj.folder is None or not obj.folder.is_dir():
        raise UserError(f"--renders {obj.folder} is not a folder.")
    frames = read_frames(obj.folder)
    images = [read_rgba(obj.folder / f["file"]) for f in frames]
    sides = sorted({image.shape[0] for image in images})
    if len(sides) > 1:
        raise UserError(f"--renders {obj.folder} mixes image sizes ({', '.join(map(str, sides))}); use one size.")
    rgba = F.interpolate(torch.stack(images).permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False).permute(0, 2, 3, 1)
    theta, phi = (torch.tensor([f[k] for f in frames]) for k in ("theta", "phi"))
    return to_uint8(rgba), view_direction(theta, phi, data.angle_overhead, data.angle_front), sides[0]


def build_views(objects: list[ToyObject], size: int, count: int, seed: int, device: torch.device) -> Views:
    """Every object's views: folders read first (a bad one fails before any rendering; the folders of one word must
    share an image size), then procedural scenes rendered from cameras drawn from `seed`."""
    pairs, sides = {}, {}
    for i, obj in enumerate(objects):
        if obj.folder is not None:
            images, directions, side = load_renders(obj, size)
            first = sides.setdefault(obj.word, (side, obj.folder))
            if first[0] != side:
                raise UserError(f"--renders of '{obj.word}' differ in image size: {first[1]} is {first[0]} px, "
                                f"{obj.folder} is {side} px; render one word's folders at one size.")
            pairs[i] = (images, directions)
    generator = torch.Generator().manual_seed(seed)
    for i, obj in enumerate(tqdm(objects, desc=f"views {size}px")):
        if i not in pairs:
            pairs[i] = render_object_cameras(obj, size, count, generator, device)
    columns = list(zip(*(pairs[i] for i in range(len(objects)))))  # cameras only when every object has them
    owners = [torch.full((len(pairs[i][0]),), i) for i in range(len(objects))]
    cameras = [torch.cat(column) for column in columns[2:]] if len(set(map(len, pairs.values()))) == 1 else []
    return Views(torch.cat(columns[0]), torch.cat(owners), torch.cat(columns[1]).cpu(), *cameras)


def cached_views(out: Path, objects: list[ToyObject], size: int, count: int, seed: int,
                 device: torch.device) -> Views:
    """The training views: from OUT/.cache when they match this recipe, else rendered (before OUT is created)."""
    file, key = out / ".cache" / "views.pt", json.dumps([[o.source, o.word] for o in objects] + [size, count, seed])
    if file.is_file():
        data = torch.load(file, map_location="cpu", weights_only=True)
        if data["key"] == key and "poses" in data:  # caches of earlier versions kept no cameras
            return Views(**{name: data[name] for name in Views.__dataclass_fields__})
    views = build_views(objects, size, count, seed, device)
    data = {"key": key, **vars(views)}
    write_atomic(file, lambda tmp: torch.save(data, tmp))
    return views


@dataclass
class Captions:
    """Token ids of every caption context: main.py's prompt of each view [N, 2, 77] and the templates of each
    object [O, 2, T, 77], each naming the word alone (index 0) or with the instance's colours (index 1), and the
    empty caption [77]."""

    prompt: Tensor
    templates: Tensor
    object_of: Tensor  # [N] index of each view's object
    empty: Tensor
    colour_share: float = 0.0  # of the prompt and template captions: the word with the instance's colours

    def to(self, device: torch.device) -> "Captions":
        return Captions(self.prompt.to(device), self.templates.to(device), self.object_of.to(device),
                        self.empty.to(device), self.colour_share)

    def draw(self, views: Tensor, generator: torch.Generator) -> Tensor:
        """The caption ids [B, 77] of views [B]: each sample's context drawn with CAPTION_SHARES, the colours with
        `colour_share`, its template uniformly; the random numbers come from the CPU `generator`, so a resumed
        run draws the same."""
        count, device = len(views), views.device
        u = torch.rand(count, generator=generator).to(device)
        colours = (torch.rand(count, generator=generator) < self.colour_share).long().to(device)
        pick = torch.randint(0, self.templates.shape[2], (count,), generator=generator).to(device)
        template = self.templates[self.object_of[views], colours, pick]
        ids = torch.where((u < CAPTION_SHARES["template"])[:, None], template, self.prompt[views, colours])
        return torch.where((u >= 1 - CAPTION_SHARES["empty"])[:, None], self.empty, ids)


def object_colours(objects: list[ToyObject], views: Views, sample: int = 64) -> list[tuple[str, ...]]:
    """Each object's colour words, from (up to `sample` of) its training views."""
    return [colour_words(views.images[(views.objects == i).nonzero()[:sample, 0]]) for i in range(len(objects))]


def caption_ids(tokenizer: Any, objects: list[ToyObject], views: Views, colour_share: float = 0.0) -> Captions:
    """Every caption of every view, tokenised once; `colour_share` of the prompt and template captions name the
    instance's colours."""
    def encode(texts: list[str]) -> Tensor:
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    names = [(obj.word, described(obj.word, colours)) for obj, colours in zip(objects, object_colours(objects, views))]
    prompts = encode([text for pair in names for name in pair for text in captions(name)])
    prompts = prompts.reshape(len(objects), 2, -1, prompts.shape[1])[views.objects, :, views.directions]
    templates = encode([text for pair in names for name in pair for text in template_captions(name)])
    return Captions(prompts, templates.reshape(len(objects), 2, -1, templates.shape[1]), views.objects,
                    encode([""])[0], colour_share)


def load_world(model: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A prior folder's objects.json: (training instance -> word, held-out instance -> word). A flat file of an
    earlier prior (instance -> word) has no held-out instances."""
    try:
        table = json.loads((Path(model) / "objects.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{model} has no readable objects.json ({exc}); give a folder written by "
                        "scripts/train-toy-prior.py.") from None
    if "objects" in table:
        return dict(table["objects"]), dict(table.get("held_out", {}))
    return dict(table), {}


def write_card(out: Path, recipe: dict, objects: list[ToyObject], held_out: list[ToyObject], views: Views,
               shape: tuple[int, int], done: tuple[int, int], seconds: float, device: str) -> None:
    """README.md: what the model saw, how long it trained, how to make it again, and what it is not for;
    objects.json: every training and held-out instance with its word."""
    rows = class_rows(objects, held_out, views)
    init, share = recipe.get("init"), recipe.get("colour_share", 0.0)
    colours = (f" In {share:.0%} of the prompt and template captions the word comes with the instance's one or two "
               f"main colours, named from its views (`"
               f"{template_captions(described(objects[0].word, object_colours(objects[:1], views)[0]))[0]}`)."
               if share else "")
    options = ["--objects", *recipe["objects"], *(["--renders", *recipe["renders"]] if recipe["renders"] else []),
               *(["--held_out", *recipe["held_out"]] if recipe["held_out"] else []),
               "--size", recipe["size"], "--steps", *map(str, done), "--seed", str(recipe["seed"]),
               *(["--init", shown_path(init)] if init else []), *(["--colour_share", f"{share:g}"] if share else [])]
    start = (f"from `{shown_path(init)}` (its VAE kept, its UNet and text encoder trained on): UNet and text encoder "
             if init else f"VAE {done[0]}/{recipe['steps'][0]} steps, then UNet and text encoder ")
    shares = ", ".join(f"{name} {share:.0%}" for name, share in CAPTION_SHARES.items())
    text = f"""# Toy Stable Diffusion prior (RealFusion tests)

A tiny Stable Diffusion 1.x-format model (diffusers folder, fp16 weights) that knows {len(class_words(objects))}
classes of objects, {len(objects)} instances in all, made to test score distillation and textual inversion end to
end. Each word names a class; the held-out instances of a class were never shown to it. It is for testing the
method, **not for real photos**.

| word | training instances | held-out instances | views |
| --- | --- | --- | --- |
{chr(10).join(rows)}

- Views: main.py's random training cameras (`nerf.cameras.random_cameras` with `DataOptions()` defaults) and, for
  {INPUT_SHARE:.0%} of a rendered instance's views, the input camera (front prompt); RGB over a white background.
- Captions, drawn per training sample ({shares}): main.py's prompt with the word and the view's direction suffix
  (`{captions(objects[0].word)[0]}`); one of textual inversion's {len(OBJECT_TEMPLATES)} object templates with the
  word (`{template_captions(objects[0].word)[0]}`); the empty caption (classifier-free guidance).{colours}
- Resolution: {shape[0]}x{shape[0]} images, {shape[1]}x{shape[1]}x4 latents (size `{recipe["size"]}`).
- Training: {start}{done[1]}/{recipe["steps"][1]}
  steps (saved: their EMA), SD 1.5's noise schedule, seed {recipe["seed"]}; {seconds:.0f} s on {device}.
- Regenerate: `python scripts/train-toy-prior.py OUT {" ".join(options)}` (the steps it was trained for;
  GPU kernels are not bit-reproducible, so a regenerated model is equivalent, not identical). `.cache/` (rendered
  views and the resumable checkpoint) is not part of the model. `objects.json` maps each training and held-out
  instance to its word.
"""
    write_text_atomic(out / "README.md", text)
    write_world(out, objects, held_out)


def shown_path(path: str) -> str:
    """`path` relative to the working directory when it lies inside it (a card shows the repository's own
    examples/... as such), else as given."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def class_rows(objects: list[ToyObject], held_out: list[ToyObject], views: Views) -> list[str]:
    """The card's table rows: per class word, its training and held-out instances and its number of views."""
    counts = torch.bincount(views.objects, minlength=len(objects))
    rows = []
    for word in class_words(objects):
        members = [i for i, o in enumerate(objects) if o.word == word]
        sources = ", ".join(objects[i].source for i in members)
        held = ", ".join(o.source for o in held_out if o.word == word) or "none"
        rows.append(f"| {word} | {sources} | {held} | {int(counts[members].sum())} |")
    return rows


def write_world(out: Path, objects: list[ToyObject], held_out: list[ToyObject]) -> None:
    """objects.json: every training and held-out instance with its word (`load_world` reads it)."""
    world = {"objects": {o.source: o.word for o in objects}, "held_out": {o.source: o.word for o in held_out}}
    write_text_atomic(out / "objects.json", json.dumps(world, indent=2) + "\n")


def world_specs(table: dict[str, str], held_out: dict[str, str]) -> tuple[list[str], list[str]]:
    """objects.json's instances as the --objects and --held_out options that name them (`family:1,4,7=word` and
    `family:100,101`), so that another model can be trained on the same world; renders folders are left out."""
    objects: dict[tuple[str, str], list[str]] = {}
    for source, word in table.items():
        family, colon, seed = source.partition(":")
        if colon and family in FAMILIES:
            objects.setdefault((family, word), []).append(seed)
    held: dict[str, list[str]] = {}
    for source in held_out:
        family, _, seed = source.partition(":")
        held.setdefault(family, []).append(seed)
    return ([f"{family}:{','.join(seeds)}={word}" for (family, word), seeds in objects.items()],
            [f"{family}:{','.join(seeds)}" for family, seeds in held.items()])
