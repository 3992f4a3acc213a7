"""The toy prior's training images: objects, their words, the views main.py asks about, and the captions.

An object is a procedural scene (`family:seed=word`, rendered here by ray tracing) or a folder of RGBA renders
with a ``cameras.json`` (`DIR=word`). Rendered objects are seen from the camera distribution main.py samples for
the prior (`random_cameras` with `DataOptions()` defaults) plus, for INPUT_SHARE of the views, the input camera
(main.py renders it with the front prompt every 10th step). Captions are exactly main.py's prompts: the default
text with the word in place of <token>, and the view's direction suffix. Images are composited on white.

cameras.json of a renders folder: ``{"frames": [{"file": "000.png", "theta": 75, "phi": 0, "radius": 1.8,
"fovy": 55}, ...]}`` -- polar angle and azimuth in degrees, as `nerf.cameras.fixed_cameras` takes them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from nerf.cameras import FRONT, direction_prompts, fixed_cameras, random_cameras, view_direction
from nerf.errors import UserError
from nerf.evaluation.raytrace import over_background, render_rgba
from nerf.evaluation.scenes import FAMILIES, make_scene
from nerf.fileio import write_atomic, write_text_atomic
from nerf.guidance.stable_diffusion import replace_token_placeholder
from nerf.options import DEFAULT_PROMPT, DataOptions

DEFAULT_OBJECTS = ("primitive:0=cup", "union:0=robot", "nonconvex:0=cake", "thin:0=chair",
                   "primitive:1=book", "union:1=toy")
INPUT_SHARE = 0.1  # share of a rendered object's views taken from the input camera
P_UNCOND = 0.15  # share of training captions left empty (classifier-free guidance)
CAMERA_BATCH = 16  # views per random_cameras draw (each draw has one FoV, as in main.py)
FRAME_KEYS = ("theta", "phi", "radius", "fovy")


@dataclass(frozen=True)
class ToyObject:
    """One object of the toy world: a procedural scene or a renders folder, and its word."""

    word: str
    family: str | None = None
    seed: int = 0
    folder: Path | None = None

    @property
    def source(self) -> str:
        return f"{self.family}:{self.seed}" if self.folder is None else str(self.folder)


@dataclass
class Views:
    """The fixed training set: images over white, their object and the view's direction bucket."""

    images: Tensor  # [N, 3, S, S] uint8
    objects: Tensor  # [N] index into the object list
    directions: Tensor  # [N] bucket id (nerf.cameras.DIRECTION_NAMES)


def parse_object(spec: str) -> ToyObject:
    """`family:seed=word` -> ToyObject; an unknown family or a malformed spec is a UserError."""
    scene, sep, word = spec.partition("=")
    family, colon, seed = scene.partition(":")
    if not sep or not colon or not word.strip() or not seed.strip().lstrip("-").isdigit():
        raise UserError(f"--objects '{spec}' is not family:seed=word (e.g. primitive:0=cup).")
    if family not in FAMILIES:
        raise UserError(f"--objects '{spec}': unknown scene family '{family}'; choose one of {', '.join(FAMILIES)}.")
    return ToyObject(word.strip(), family, int(seed))


def parse_renders(spec: str) -> ToyObject:
    """`DIR=word` -> ToyObject (the folder is checked when it is read)."""
    folder, sep, word = spec.rpartition("=")
    if not sep or not folder or not word.strip():
        raise UserError(f"--renders '{spec}' is not DIR=word (a folder of RGBA renders with cameras.json, a word).")
    return ToyObject(word.strip(), folder=Path(folder).expanduser())


def check_words(objects: list[ToyObject], tokenizer: Any) -> None:
    """Every word must be one token of the tokenizer, and the words distinct, so each names one object."""
    for obj in objects:
        pieces = tokenizer.tokenize(obj.word)
        if len(pieces) != 1:
            raise UserError(f"the word '{obj.word}' of {obj.source} is {len(pieces)} tokens ({' '.join(pieces)}); "
                            f"pick a word of the tokenizer's corpus (scripts/sd_parts.py CORPUS), e.g. cup or robot.")
    words = [tokenizer.tokenize(obj.word)[0] for obj in objects]
    if len(set(words)) != len(words):
        raise UserError(f"the object words must differ, got {', '.join(o.word for o in objects)}.")


def captions(word: str) -> list[str]:
    """main.py's prompt for every direction bucket, with `word` in place of <token>."""
    text = replace_token_placeholder(DEFAULT_PROMPT, word)
    return [positive for positive, _ in direction_prompts(text, "", True, None)]


def to_uint8(rgba: Tensor) -> Tensor:
    """Straight RGBA [B, H, W, 4] in [0, 1] -> RGB over white [B, 3, H, W] uint8."""
    return (over_background(rgba, 1.0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 3, 1, 2).cpu()


def render_object(obj: ToyObject, size: int, count: int, generator: torch.Generator,
                  device: torch.device) -> tuple[Tensor, Tensor]:
    """`count` views of a procedural scene: random training cameras and INPUT_SHARE input-camera copies."""
    data = DataOptions()
    scene = make_scene(obj.family, obj.seed)
    inputs = max(1, round(count * INPUT_SHARE))
    front = fixed_cameras(data.pose_angle, torch.zeros(1), data.orbit_radius, data.default_fovy, size,
                          data.angle_overhead, data.angle_front)
    images = [to_uint8(render_rgba(scene, front.to(device))).expand(inputs, -1, -1, -1)]
    directions = [torch.full((inputs,), FRONT)]  # main.py's input-camera step always uses the front prompt
    for _ in range(math.ceil((count - inputs) / CAMERA_BATCH)):
        cams = random_cameras(CAMERA_BATCH, size, radius_range=data.radius_range, fovy_range=data.fovy_range,
                              uniform_sphere_rate=data.uniform_sphere_rate, angle_overhead=data.angle_overhead,
                              angle_front=data.angle_front, generator=generator)
        images.append(to_uint8(render_rgba(scene, cams.to(device))))
        directions.append(cams.directions)
    return torch.cat(images)[:count], torch.cat(directions)[:count]


def read_frames(folder: Path) -> list[dict]:
    """cameras.json's frames, checked against the PNG files of the folder (one entry per image)."""
    file = folder / "cameras.json"
    if not file.is_file():
        raise UserError(f"--renders {folder} has no cameras.json; see scripts/toy_prior_data.py for its format.")
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


def load_renders(obj: ToyObject, size: int) -> tuple[Tensor, Tensor]:
    """A renders folder's images (resized to `size`) and the direction buckets of their cameras."""
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
    return to_uint8(rgba), view_direction(theta, phi, data.angle_overhead, data.angle_front)


def build_views(objects: list[ToyObject], size: int, count: int, seed: int, device: torch.device) -> Views:
    """Every object's views: folders read first (a bad one fails before any rendering), then procedural scenes
    rendered from cameras drawn from `seed`."""
    pairs = {i: load_renders(obj, size) for i, obj in enumerate(objects) if obj.folder is not None}
    generator = torch.Generator().manual_seed(seed)
    for i, obj in enumerate(tqdm(objects, desc=f"views {size}px")):
        if i not in pairs:
            pairs[i] = render_object(obj, size, count, generator, device)
    images, directions = zip(*(pairs[i] for i in range(len(objects))))
    owners = [torch.full((len(pairs[i][0]),), i) for i in range(len(objects))]
    return Views(torch.cat(images), torch.cat(owners), torch.cat(directions).cpu())


def cached_views(out: Path, objects: list[ToyObject], size: int, count: int, seed: int,
                 device: torch.device) -> Views:
    """The training views: from OUT/.cache when they match this recipe, else rendered (before OUT is created)."""
    file, key = out / ".cache" / "views.pt", json.dumps([[o.source, o.word] for o in objects] + [size, count, seed])
    if file.is_file():
        data = torch.load(file, map_location="cpu", weights_only=True)
        if data["key"] == key:
            return Views(data["images"], data["objects"], data["directions"])
    views = build_views(objects, size, count, seed, device)
    data = {"key": key, **vars(views)}
    write_atomic(file, lambda tmp: torch.save(data, tmp))
    return views


def caption_ids(tokenizer: Any, objects: list[ToyObject], views: Views) -> tuple[Tensor, Tensor]:
    """Token ids of every view's caption [N, 77] and of the empty caption [77]."""
    texts = [text for obj in objects for text in captions(obj.word)] + [""]
    table = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
    return table[:-1].reshape(len(objects), -1, table.shape[1])[views.objects, views.directions], table[-1]


def write_card(out: Path, recipe: dict, objects: list[ToyObject], views: Views, shape: tuple[int, int],
               done: tuple[int, int], seconds: float, device: str) -> None:
    """README.md: what the model saw, how long it trained, how to make it again, and what it is not for."""
    rows = "\n".join(f"| {o.source} | {o.word} | {int((views.objects == i).sum())} | `{captions(o.word)[0]}` |"
                     for i, o in enumerate(objects))
    options = ["--objects", *recipe["objects"], *(["--renders", *recipe["renders"]] if recipe["renders"] else []),
               "--size", recipe["size"], "--steps", *map(str, done), "--seed", str(recipe["seed"])]
    text = f"""# Toy Stable Diffusion prior (RealFusion tests)

A tiny Stable Diffusion 1.x-format model (diffusers folder, fp16 weights) that knows {len(objects)} objects, made
to test score distillation and textual inversion end to end. It is for testing the method, **not for real photos**.

| object | word | views | caption (front view) |
| --- | --- | --- | --- |
{rows}

- Views: main.py's random training cameras (`nerf.cameras.random_cameras` with `DataOptions()` defaults) and, for
  {INPUT_SHARE:.0%} of a rendered object's views, the input camera (front prompt); RGB over a white background.
- Captions: main.py's prompts, `direction_prompts(DEFAULT_PROMPT with the word, "", True, None)` by the view's
  direction (front, side, back, overhead, bottom); {P_UNCOND:.0%} empty captions (classifier-free guidance).
- Resolution: {shape[0]}x{shape[0]} images, {shape[1]}x{shape[1]}x4 latents (size `{recipe["size"]}`).
- Training: VAE {done[0]}/{recipe["steps"][0]} steps, then UNet and text encoder {done[1]}/{recipe["steps"][1]}
  steps (saved: their EMA), SD 1.5's noise schedule, seed {recipe["seed"]}; {seconds:.0f} s on {device}.
- Regenerate: `python scripts/train-toy-prior.py OUT {" ".join(options)}` (the steps it was trained for;
  GPU kernels are not bit-reproducible, so a regenerated model is equivalent, not identical). `.cache/` (rendered views and the
  resumable checkpoint) is not part of the model. `objects.json` maps each object to its word.
"""
    write_text_atomic(out / "README.md", text)
    words = {o.source: o.word for o in objects}  # procedural "family:seed" or a renders folder -> its word
    write_text_atomic(out / "objects.json", json.dumps(words, indent=2) + "\n")
