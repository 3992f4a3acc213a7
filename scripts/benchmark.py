#!/usr/bin/env python
"""Speed of the pipeline on the GPU, with Stable Diffusion v1.5-shaped random-weight models (no download).

    python scripts/benchmark.py kernels [--out kernels.json]   # CUDA extensions vs PyTorch reference
    python scripts/benchmark.py recon [--full]                 # the real Trainer loop, default --O options
    python scripts/benchmark.py ti                             # the real textual-inversion loop, README settings
    python scripts/benchmark.py mesh                           # mesh export at the defaults, split by stage
    python scripts/benchmark.py all                            # the four above

The command line over `nerf.cli.benchmark`.
"""

import sys

from nerf.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
