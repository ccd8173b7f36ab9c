"""The label map's encoding: its dtype and nodata value, fixed by the number of classes.

>>> label_dtype(6), label_nodata(6)
(dtype('uint8'), 255)
>>> label_dtype(300), label_nodata(300)
(dtype('uint16'), 65535)
"""

from __future__ import annotations

import numpy as np


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 up to 255 classes (255 is nodata), uint16 beyond."""
    return np.dtype(np.uint8) if num_classes <= 255 else np.dtype(np.uint16)


def label_nodata(num_classes: int) -> int:
    """The label written where there is no data: the dtype's maximum."""
    return int(np.iinfo(label_dtype(num_classes)).max)
