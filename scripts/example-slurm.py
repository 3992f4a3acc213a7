#!/usr/bin/env python
"""Reconstruct many inputs at once: one cluster job per rgba.png, then a summary table.

    python scripts/example-slurm.py --partition gpu                       # every bundled example
    python scripts/example-slurm.py --inputs_dir my-photos --cluster local -- --iters 2000

The command line over `nerf.cli.sweep`.
"""

import sys

from nerf.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
