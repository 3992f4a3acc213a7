"""Build the bundled inputs in examples/natural-images/ from photos shipped inside scikit-image.

    python scripts/make-examples.py [--output_dir examples/natural-images] [--size 512]

Each example is cropped (optionally), segmented with the GrabCut prior written below, cleaned up,
padded to a square and written as image.png, mask.png and rgba.png, with token_autoinit.txt holding a
one-word description (the textual-inversion initializer). The result is the same on every run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from nerf.input_prep.masking import (
    BACKGROUND,
    FOREGROUND,
    PROBABLY_BACKGROUND,
    PROBABLY_FOREGROUND,
    border_seeds,
    make_input,
    write_outputs,
)
from nerf.errors import ArgumentParser, one_line_errors
from nerf.fileio import write_text_atomic

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the (cropped) photo


@dataclass(frozen=True)
class Region:
    """A shape painted onto the GrabCut prior; later regions paint over earlier ones."""

    label: int
    shape: Literal["rect", "ellipse"]
    box: Box


@dataclass(frozen=True)
class Example:
    name: str
    photo: str  # function name in skimage.data
    word: str  # one-word description, the textual-inversion initializer
    description: str
    licence: str  # as stated by scikit-image's documentation of the photo
    crop: Box | None = None
    base: int | None = None  # label everywhere before `regions` are painted; None = the generic border prior
    regions: tuple[Region, ...] = ()


EXAMPLES = (
    Example(
        name="cat",
        photo="chelsea",
        word="cat",
        description="Chelsea the cat, close-up of the head",
        licence="No copyright restrictions. CC0 by the photographer (Stefan van der Walt).",
        base=PROBABLY_FOREGROUND,
        regions=(
            Region(PROBABLY_BACKGROUND, "rect", (365, 75, 451, 300)),
            Region(BACKGROUND, "rect", (410, 0, 451, 300)),
            Region(BACKGROUND, "rect", (385, 75, 451, 300)),
            Region(FOREGROUND, "rect", (60, 60, 345, 300)),
            Region(FOREGROUND, "rect", (335, 0, 372, 35)),  # the right ear
        ),
    ),
    Example(
        name="coffee_cup",
        photo="coffee",
        word="cup",
        description="Espresso cup with saucer and spoon on a wooden table (courtesy of Pikolo Espresso Bar)",
        licence="No copyright restrictions. CC0 by the photographer (Rachel Michetti).",
        regions=(Region(FOREGROUND, "ellipse", (345, 262, 385, 308)),),  # the spoon's dark reflections
    ),
    Example(
        name="rocket",
        photo="rocket",
        word="rocket",
        description="Falcon 9 carrying DSCOVR on the launch pad (SpaceX launch photo)",
        licence="Captured by SpaceX and released in the public domain.",
        crop=(215, 110, 425, 420),
        base=BACKGROUND,
        regions=(
            Region(PROBABLY_BACKGROUND, "rect", (65, 5, 147, 300)),
            Region(PROBABLY_FOREGROUND, "rect", (85, 5, 127, 300)),
            Region(FOREGROUND, "rect", (98, 40, 114, 250)),
        ),
    ),
)


def load_photo(example: Example) -> np.ndarray:
    import skimage.data

    photo = getattr(skimage.data, example.photo)()
    if example.crop is not None:
        x0, y0, x1, y1 = example.crop
        photo = photo[y0:y1, x0:x1]
    return np.ascontiguousarray(photo)


def paint_seeds(base: np.ndarray, regions: tuple[Region, ...]) -> np.ndarray:
    """Paint each region in order onto a copy of the `base` labels (ellipses are inscribed in their box)."""
    seeds = base.copy()
    h, w = seeds.shape
    rows, cols = np.mgrid[0:h, 0:w] + 0.5
    for region in regions:
        x0, y0, x1, y1 = region.box
        if region.shape == "rect":
            inside = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
        else:
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            inside = ((cols - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2 <= 1
        seeds[inside] = region.label
    return seeds


def build(example: Example, out_dir: Path, size: int) -> None:
    photo = load_photo(example)
    shape = photo.shape[:2]
    base = border_seeds(shape) if example.base is None else np.full(shape, example.base, np.uint8)
    seeds = paint_seeds(base, example.regions)
    image, mask, _ = make_input(photo, None, size, "grabcut", seeds)
    write_outputs(out_dir / example.name, image, mask)
    write_text_atomic(out_dir / example.name / "token_autoinit.txt", example.word + "\n")


def sources_markdown(size: int) -> str:
    """Where every bundled input comes from, its licence, and how it was made."""
    import skimage

    lines = [
        "# Sources of the bundled examples",
        "",
        f"Made by `python scripts/make-examples.py` from photographs shipped inside scikit-image "
        f"{skimage.__version__} (`skimage.data`). The licences are quoted from the documentation of each "
        "`skimage.data` function (the `skimage/data/README.txt` of the installed package lists none).",
        "",
        "| example | `skimage.data` photo | what it shows | licence | crop (x0, y0, x1, y1) | token_autoinit |",
        "|---|---|---|---|---|---|",
    ]
    for ex in EXAMPLES:
        crop = "none" if ex.crop is None else str(ex.crop)
        lines.append(f"| `{ex.name}` | `{ex.photo}()` | {ex.description} | {ex.licence} | {crop} | {ex.word} |")
    lines += [
        "",
        "## How they were made",
        "",
        "1. The photo is loaded from `skimage.data` and optionally cropped (pixel box above).",
        "2. The object is segmented with OpenCV GrabCut (8 iterations, fixed RNG seed), started from a prior:",
        "   hand-placed rectangles/ellipses of sure or probable object and background, listed in",
        "   `scripts/make-examples.py`, painted over a constant label (`cat`, `rocket`) or over the generic",
        "   prior of `scripts/extract-mask.py` (a thin border ring is background; `coffee_cup`).",
        "3. The mask is cleaned up (small specks dropped, only the main component(s) kept, small holes filled).",
        f"4. Image and mask are zero-padded to a square (the shorter side, half before and half after) and "
        f"resized to {size}x{size} (bilinear image, nearest-neighbour mask); `rgba.png` is the padded RGB "
        "with the mask as alpha.",
        "",
        "No `learned_embeds.bin` is shipped: run textual inversion (see the README) to make one, or let",
        "`main.py` use the word in `token_autoinit.txt` in place of the learned token.",
        "",
    ]
    return "\n".join(lines)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument("--output_dir", type=Path, default=repo / "examples" / "natural-images")
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    for example in EXAMPLES:
        build(example, args.output_dir, args.size)
        print(f"wrote {args.output_dir / example.name}")
    write_text_atomic(args.output_dir / "SOURCES.md", sources_markdown(args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
