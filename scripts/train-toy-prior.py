#!/usr/bin/env python
"""Train a toy Stable Diffusion that knows a small world of classes of procedural objects, saved as a standard SD 1.x
folder.

    python scripts/train-toy-prior.py OUT [--objects family:seeds=word ...] [--renders DIR=word ...]
        [--held_out family:seeds ...] [--size cpu|gpu] [--steps VAE UNET] [--seed S] [--resume]
        [--device cuda|cpu] [--max_minutes M] [--compile auto|off|default|reduce-overhead]

Each word names a class: several seeds of a family and/or several folders of renders. Held-out seeds are never
rendered for training; `evaluate.py --suite synthetic --guidance toy` reconstructs them. Classes, views and
captions: nerf/toy_models/world.py; training: nerf/toy_models/training.py. OUT/.cache holds the views and
checkpoint.pt (atomic); --resume continues from it with its settings (a larger UNET step count trains on);
--max_minutes stops early and still saves a usable model. The model is OUT without .cache (fp16 safetensors).
"""

import sys

from nerf.toy_models.training import main

if __name__ == "__main__":
    sys.exit(main())
