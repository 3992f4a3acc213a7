#!/usr/bin/env python
"""RealFusion reconstruction: fit a NeRF to one RGBA image, guided by Stable Diffusion and a learned token.

    python main.py --O --image_path examples/natural-images/cat/rgba.png --text "A high-resolution DSLR image of a <token>"

The command line over `nerf.cli.train`.
"""

import sys

from nerf.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
