#!/usr/bin/env python
"""From a photo to a textured mesh in one resumable command.

    python scripts/reconstruct.py PHOTO --workspace DIR [--mask_path M] [--initializer_token WORD]
        [--pretrained_model_name_or_path MODEL] [--ti_steps N] [--skip_ti] [-- main.py options ...]

The command line over `nerf.cli.reconstruct`.
"""

import sys

from nerf.cli.reconstruct import main

if __name__ == "__main__":
    sys.exit(main())
