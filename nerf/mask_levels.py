"""One reading of mask values for every tool: masks stored as two levels (0 and one other value, such as a label
map's 3 or an alpha of 0/1) are binary masks, whatever that value; other masks are read on their storage scale.

`extract-mask.py` (the mask it is given) and `main.py` (the input's alpha) use this, so that what one accepts the
other accepts too.
"""

from __future__ import annotations

import numpy as np


def two_level_object_value(values: np.ndarray, full: float) -> float | None:
    """The object's value when `values` hold exactly 0 and one other value below `full` (the storage's maximum);
    None for any other mask, which is read on its scale (0 .. full)."""
    low, high = float(values.min()), float(values.max())
    if low != 0 or not 0 < high < full or np.count_nonzero((values != 0) & (values != high)):
        return None
    return high
