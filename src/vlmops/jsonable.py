"""One JSON-ready conversion for results: numpy to Python, NaN/inf to None, tuples to lists."""

from __future__ import annotations

import math
from typing import Any


def to_jsonable(value: Any) -> Any:
    """A copy of `value` that `json.dumps` accepts and that never holds NaN (None instead)."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
