"""The one JSON ``default=`` for records: NumPy scalars and paths become JSON, arrays never do.

The audit log's ``details`` and the enrolment store's quality measures are small facts. An array
in them is almost always an embedding by mistake, and embeddings are biometric data that must not
leak into a log, so arrays are refused outright rather than turned into lists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def json_default(value: object) -> object:
    """``json.dumps(default=...)``: NumPy scalars and paths as plain values; TypeError otherwise."""
    if isinstance(value, np.ndarray):
        raise TypeError(f"a NumPy array of shape {value.shape} (embeddings never go in the audit "
                        "log or the enrolment store's records)")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"a {type(value).__name__} is not JSON data")
