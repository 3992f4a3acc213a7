#!/usr/bin/env python
"""Write a random-weight Zero-1-to-3 model (published diffusers layout) for tests, smoke runs and benchmarks.

    python scripts/make-tiny-zero123.py OUT [--full_size] [--seed 0]

The command line over `nerf.toy_models.tiny_zero123` (the layout and the two sizes are described there).
"""

import sys

from nerf.toy_models.tiny_zero123 import main

if __name__ == "__main__":
    sys.exit(main())
