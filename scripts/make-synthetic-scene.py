#!/usr/bin/env python
"""Write procedural ground-truth scenes: an RGBA input view, a mesh and renders of the validation path.

    python scripts/make-synthetic-scene.py OUT --family union [--seed 0]   # one scene in OUT
    python scripts/make-synthetic-scene.py OUT --all [--seed 0]            # OUT/<family>-<seed> for every family

The command line over `nerf.cli.make_synthetic_scene`.
"""

import sys

from nerf.cli.make_synthetic_scene import main

if __name__ == "__main__":
    sys.exit(main())
