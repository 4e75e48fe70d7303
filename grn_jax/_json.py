"""`json.dumps(..., default=jsonable)`: numpy scalars/arrays as Python values, anything else as str.

Used where manifests and network files record parameters from third-party reports.
"""

from __future__ import annotations

import numpy as np


def jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
