"""Make the square RGBA input of stage two from a photo.

    python scripts/extract-mask.py --image_path photo.jpg --output_dir DIR            # find the object
    python scripts/extract-mask.py --image_path photo.jpg --mask_path m.png --output_dir DIR

Writes DIR/image.png (square RGB), DIR/mask.png (square grey), DIR/rgba.png (the two combined) and
DIR/framing.json (the framing and its warnings). By default the object is recentred and scaled the way main.py's
input camera sees an object that fills the scene (--no-recenter only pads the photo to a square).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nerf.input_prep.framing import object_fraction
from nerf.input_prep.masking import box_seeds, existing_outputs, load_mask, load_rgb, make_input, write_outputs
from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.fileio import write_text_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_path", required=True, help="input photo (any PIL-readable format)")
    parser.add_argument("--output_dir", required=True, help="folder for image.png, mask.png, rgba.png and framing.json (how the object was framed)")
    parser.add_argument("--mask_path", default=None, help="existing object mask of the same size (grey)")
    parser.add_argument("--size", type=int, default=512, help="side length of the square outputs")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    parser.add_argument(
        "--method", choices=("grabcut", "rembg"), default="grabcut",
        help="object extractor without --mask_path: grabcut (offline, CPU) or rembg (pip install rembg)",
    )
    parser.add_argument(
        "--box", type=int, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), default=None,
        help="grabcut only: pixel box around the object in the input photo (outside is background)",
    )
    parser.add_argument(
        "--recenter", action=argparse.BooleanOptionalAction, default=True,
        help="centre the object and scale it as main.py's input camera sees an object filling the scene "
             "(--no-recenter: only pad the photo to a square)",
    )
    parser.add_argument(
        "--object_fraction", type=float, default=None,
        help=f"with --recenter: share of the output's side the object spans (default {object_fraction():.2f}, "
             "from main.py's default --radius_rot, --fovy_range and --bound)",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Path]:
    """Check everything, compute the outputs, and only then write them."""
    if args.box is not None and (args.mask_path is not None or args.method != "grabcut"):
        raise UserError("--box only guides --method grabcut without --mask_path; drop one of them")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise UserError(f"--output_dir {args.output_dir} is a file; give a folder (it is created if missing)")
    clashes = existing_outputs(args.output_dir)
    if clashes and not args.overwrite:
        names = ", ".join(p.name for p in clashes)
        raise UserError(f"{args.output_dir} already holds {names}; pass --overwrite or pick another --output_dir")
    image = load_rgb(args.image_path)
    mask = load_mask(args.mask_path, image.shape[:2]) if args.mask_path else None
    seeds = box_seeds(image.shape[:2], args.box) if args.box is not None else None
    if args.object_fraction is not None and not 0 < args.object_fraction <= 1:
        raise UserError(f"--object_fraction must be in (0, 1], got {args.object_fraction}")
    fraction = (args.object_fraction or object_fraction()) if args.recenter else None
    square_image, square_mask, warnings = make_input(image, mask, args.size, args.method, seeds, fraction)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    framing = {"recentered": args.recenter, "object_fraction": fraction, "warnings": warnings}
    written = write_outputs(args.output_dir, square_image, square_mask)
    written["framing.json"] = write_text_atomic(Path(args.output_dir) / "framing.json",
                                                json.dumps(framing, indent=2) + "\n")
    return written


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    written = run(parse_args(argv))
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0

