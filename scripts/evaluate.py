#!/usr/bin/env python
"""Evaluate reconstructions: input view, novel views, geometry; or run the synthetic benchmark.

    python scripts/evaluate.py WORKSPACE [--gt_mesh MESH] [--gt_views DIR] [--out report.json]
    python scripts/evaluate.py --compare WS_A WS_B ... [--gt_mesh MESH] [--gt_views DIR] [--out compare.json]
    python scripts/evaluate.py --suite synthetic [--device cuda] [--size reduced|default] [--out suite.json]

The command line over `nerf.cli.evaluate` (what is measured is described there).
"""

import sys

from nerf.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
