#!/usr/bin/env python
"""Build the four CUDA extensions in parallel for the present GPU (`--jit`, the default, or `--wheel`).

The command line over `nerf.cli.build_extensions`.
"""

import sys

from nerf.cli.build_extensions import main

if __name__ == "__main__":
    sys.exit(main())
