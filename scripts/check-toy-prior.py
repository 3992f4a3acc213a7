#!/usr/bin/env python
"""Check that a toy prior knows its world: samples of every word and side against ground-truth renders, a learned
token's held-out denoising loss (--token), or the held-out denoising loss by caption context and word (--contexts);
or whether a toy Zero-1-to-3 uses the camera (--zero123).

    python scripts/check-toy-prior.py [PRIOR] [--out DIR] [--samples N] [--steps S] [--views V] [--seed S]
    python scripts/check-toy-prior.py [PRIOR] --token EMBEDS --object FAMILY:SEED=WORD --initializer WORD
    python scripts/check-toy-prior.py [PRIOR] --contexts [--views V] [--device cuda]
    python scripts/check-toy-prior.py --zero123 MODEL [--views V] [--steps S] [--seed S] [--device cuda]

The command line over `nerf.toy_models.check` (each measurement is described there).
"""

import sys

from nerf.toy_models.check import main

if __name__ == "__main__":
    sys.exit(main())
