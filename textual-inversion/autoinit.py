#!/usr/bin/env python
"""Choose the textual-inversion initializer automatically: the CLIP noun token closest to the photo.

    python textual-inversion/autoinit.py save_embeddings               # once per CLIP model
    python textual-inversion/autoinit.py get_initialization IMAGE      # top 5 + token_autoinit.txt

The command line over `nerf.textual_inversion.autoinit` (method and files are described there).
"""

import sys

from nerf.textual_inversion.autoinit import main

if __name__ == "__main__":
    sys.exit(main())
