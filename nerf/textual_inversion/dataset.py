"""Training data for single-image textual inversion: the photo(s), their captions, and the augmentations.

Which files are used: every file directly inside the data folder whose suffix is an image type
(``IMAGE_SUFFIXES``), in name order; anything else (masks named .png are images too, but .bin, .txt,
.json ... are not) is ignored, and every listed image must open.

Colour rule: an image with transparency (RGBA, LA, or a palette with a transparent colour) is
composited over a white background with its alpha (straight, not premultiplied:
rgb * a + 255 * (1 - a)), so the object is seen on white as in the reconstruction stage; other
images are converted to RGB as they are.

Item i uses image i mod n_images; the dataset has n_images * repeats items. Each item gets a caption
drawn from the templates with the placeholder token filled in, tokenised to the tokenizer's maximum
length. An item asked for by index alone draws its caption and augmentation from torch's global
generator; the training loop asks for (index, seed) pairs from `ResumableSampler`, so that what an item
looks like depends only on the run's data seed, the epoch and the position in it: a resumed run sees the
very items the interrupted one would have, whatever the worker processes or the prefetching did.

Speed (an item costs tens of milliseconds of CPU, four items make one optimisation step): the
augmentation's deterministic first step (resize and centre crop to 1.25 x size) is applied once per
image instead of once per item, the captions are tokenised once, and the image becomes a tensor
through NumPy in one pass. Each gives exactly the values of the per-item computation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from nerf.errors import UserError

# torchvision is imported by the functions that build augmentations: with the torch._dynamo it pulls in it costs
# about 1 s, and every command-line tool imports this module (for its templates), most of them never augmenting.

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

OBJECT_TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
]


def reconstruction_templates() -> list[str]:
    """main.py's default prompt as score distillation words it at the input view (the front view's suffix), with
    the token as {}: a token learned in the very caption it is then used in. The object templates teach the token
    in captions main.py never writes, and a prior may read a word differently in them (README, "Why the token
    does not yet help")."""
    from nerf.cameras import FRONT, direction_prompts
    from nerf.guidance.stable_diffusion import TOKEN_PLACEHOLDER
    from nerf.options import DEFAULT_PROMPT

    text = DEFAULT_PROMPT.replace(TOKEN_PLACEHOLDER, "{}")
    return [direction_prompts(text, "", dir_text=True, suppress_face=None)[FRONT][0]]


TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES, "reconstruction": reconstruction_templates()}


def list_images(folder: str | Path) -> list[Path]:
    """The image files of `folder` in name order (UserError if there are none)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"--train_data_dir {root} is not a folder; point it at a folder holding the input photo.")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"--train_data_dir {root} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                        f"put the input photo there.")
    return files


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB, compositing any transparency over white (see the module docstring)."""
    try:
        with Image.open(path) as image:
            image.load()
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            if not has_alpha:
                return image.convert("RGB")
            rgba = image.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path} ({type(exc).__name__}); remove it from --train_data_dir "
                        f"or replace it with a readable photo.") from exc
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def load_images(folder: str | Path) -> list[Image.Image]:
    """Every image of the data folder as RGB (see the module docstring for the rules)."""
    return [load_rgb(path) for path in list_images(folder)]


def center_crop_square(image: Image.Image) -> Image.Image:
    """The largest centred square (the shorter side), as the original cropped its arrays."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def heavy_framing(size: int) -> Callable[[Image.Image], Image.Image]:
    """The first, deterministic step of RealFusion's augmentation: a square of 1.25 x size around the centre."""
    from torchvision import transforms as T

    big = int(1.25 * size)
    return T.Compose([T.Resize(big), T.CenterCrop(big)])


def heavy_augmentation(size: int) -> Callable[[Image.Image], Image.Image]:
    """The random steps of RealFusion's augmentation, applied to a `heavy_framing` image (PIL in, PIL out)."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    return T.Compose([
        T.RandomApply([
            T.RandomRotation(10, interpolation=InterpolationMode.NEAREST, fill=255),
            T.CenterCrop(int(size * 5 / 6)),
            T.Resize(size),
        ], p=0.75),
        T.RandomResizedCrop(size, scale=(0.85, 1.15)),
        T.RandomApply([T.ColorJitter(brightness=0.04, contrast=0.04, saturation=0.04, hue=0.04)], p=0.75),
        T.RandomGrayscale(p=0.10),
        T.RandomApply([T.GaussianBlur(5, (0.1, 2))], p=0.10),
        T.RandomHorizontalFlip(p=0.5),
    ])


def to_pixels(image: Image.Image, range_01: bool) -> torch.Tensor:
    """CHW float32 in [-1, 1] (or [0, 1]): torchvision's to_tensor values, computed by NumPy in one pass."""
    pixels = np.asarray(image).transpose(2, 0, 1).astype(np.float32)
    pixels /= np.float32(255)
    if not range_01:
        pixels *= 2
        pixels -= 1
    return torch.from_numpy(pixels)


def plain_augmentation(size: int) -> Callable[[Image.Image], Image.Image]:
    """The textual-inversion default: bicubic resize to size x size and a random horizontal flip."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    return T.Compose([
        T.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
    ])


class TextualInversionDataset(torch.utils.data.Dataset):
    """Augmented copies of the input photo(s) with captions containing the placeholder token."""

    def __init__(self, images: list[Image.Image], tokenizer: Any, placeholder_token: str, size: int = 512,
                 repeats: int = 100, learnable_property: str = "object", center_crop: bool = False,
                 use_augmentations: bool = False, augment_range_01: bool = False) -> None:
        images = [center_crop_square(image) for image in images] if center_crop else list(images)
        if use_augmentations:
            frame = heavy_framing(size)
            images = [frame(image) for image in images]
        self.images = images
        self.repeats = repeats
        self.augment = heavy_augmentation(size) if use_augmentations else plain_augmentation(size)
        # The original fed heavy augmentations to the VAE in [0, 1]; [-1, 1] is what the VAE expects.
        self.range_01 = use_augmentations and augment_range_01
        # One caption at a time: batch tokenisation would start the tokenizer's threads before the
        # DataLoader forks its workers.
        self.captions = torch.stack([
            tokenizer(template.format(placeholder_token), padding="max_length", truncation=True,
                      max_length=tokenizer.model_max_length, return_tensors="pt").input_ids[0]
            for template in TEMPLATES[learnable_property]])

    def __len__(self) -> int:
        return len(self.images) * self.repeats

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """Item `key`, or for an (index, seed) pair item `index` drawn with its own seed (the global generator
        is left as it was)."""
        if isinstance(key, tuple):
            index, seed = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self[index]
        pixels = to_pixels(self.augment(self.images[key % len(self.images)]), self.range_01)
        caption = int(torch.randint(len(self.captions), ()))
        return {"pixel_values": pixels, "input_ids": self.captions[caption].clone()}


class ResumableSampler(torch.utils.data.Sampler):
    """Shuffled (index, item seed) pairs, epoch after epoch, as a function of (seed, epoch, position) only.

    A DataLoader's own shuffling draws from the global generator whenever an epoch starts, so a run resumed in
    the middle of an epoch would see other items than the uninterrupted one; here `skip_batches` puts the
    sampler where the interrupted run was, and the global generator is never touched.
    """

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.position = 0  # items handed out so far, over all epochs

    def __len__(self) -> int:
        return self.size

    def skip_batches(self, count: int) -> None:
        """Start after `count` micro-batches (the last batch of an epoch may be short, as the DataLoader's)."""
        epoch, batch = divmod(count, math.ceil(self.size / self.batch_size))
        self.position = epoch * self.size + batch * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = divmod(self.position, self.size)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        for k in range(start, self.size):
            self.position = epoch * self.size + k + 1
            yield int(order[k]), (self.seed * 1_000_003 + self.position) % 2**63
