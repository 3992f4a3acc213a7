#!/usr/bin/env python
"""Stage one of RealFusion: learn a new text token for the object of one photo (textual inversion).

    python textual-inversion/textual_inversion.py --train_data_dir DIR --placeholder_token _my_object_ \\
        --initializer_token cat --output_dir OUT [--use_augmentations ...]

The command line over `nerf.textual_inversion.train` (flags, outputs and resuming are described there).
"""

import sys

from nerf.textual_inversion.train import main

if __name__ == "__main__":
    sys.exit(main())
