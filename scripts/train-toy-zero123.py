#!/usr/bin/env python
"""Train a toy Zero-1-to-3 on the toy prior's world, saved in the published diffusers layout of Zero-1-to-3.

    python scripts/train-toy-zero123.py OUT [--prior TOY_SD_FOLDER] [--objects family:seeds=word ...]
        [--held_out family:seeds ...] [--size cpu|gpu] [--steps N] [--seed S] [--resume] [--device cuda|cpu]
        [--max_minutes M] [--compile auto|off|default|reduce-overhead]

Pairs of views of one instance, conditioned on the input view and the relative camera exactly as `--guidance
zero123` conditions them; with --prior the toy prior's VAE (frozen) and world. Training: nerf/toy_models/
zero123_training.py. OUT/.cache holds the views and checkpoint.pt (atomic); --resume continues from it (a larger
--steps trains on); --max_minutes stops early and still saves a usable model. The model is OUT without .cache.
"""

import sys

from nerf.toy_models.zero123_training import main

if __name__ == "__main__":
    sys.exit(main())
