#!/usr/bin/env python
"""Make the square RGBA input of stage two from a photo.

    python scripts/extract-mask.py --image_path photo.jpg --output_dir DIR            # find the object
    python scripts/extract-mask.py --image_path photo.jpg --mask_path m.png --output_dir DIR

The command line over `nerf.cli.extract_mask`.
"""

import sys

from nerf.cli.extract_mask import main

if __name__ == "__main__":
    sys.exit(main())
