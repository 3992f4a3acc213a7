#!/usr/bin/env python
"""Write a tiny random-weight Stable Diffusion model for tests and smoke runs, fully offline.

    python scripts/make-tiny-sd.py OUT [--single_file PATH.safetensors] [--seed 0]

The command line over `nerf.toy_models.tiny_sd` (the model, its layout and the single-file format are described
there).
"""

import sys

from nerf.toy_models.tiny_sd import main

if __name__ == "__main__":
    sys.exit(main())
