"""Robust statistics the checks share: thresholds relative to the data set's own distribution."""

from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 0.6744897501960817  # Phi^-1(3/4): MAD of a normal is 0.6745 sigma


def robust_z(values: np.ndarray) -> np.ndarray:
    """Modified z-score (Iglewicz & Hoaglin): 0.6745 (x - median) / MAD; 0 where MAD is 0 and x = median.

    Values that differ from a constant majority get +-inf, so they still count as outliers.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    median = np.median(x)
    mad = np.median(np.abs(x - median))
    if mad == 0:
        diff = x - median
        return np.where(diff == 0, 0.0, np.copysign(np.inf, diff))
    return MAD_TO_SIGMA * (x - median) / mad


ROW_BLOCK = 4096  # rows of an (items, classes) probability matrix worked on at once


def row_blocks(n: int) -> list[slice]:
    """Slices of `ROW_BLOCK` rows covering n rows: per-row work on an (n, classes) matrix block by
    block makes no full-size temporary (at 1,923 classes one is 1.5 GiB per 100k items)."""
    return [slice(start, start + ROW_BLOCK) for start in range(0, n, ROW_BLOCK)]


def other_class(views: tuple[np.ndarray, ...], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item, over the mean of `views` ((n, classes) probabilities, one or two): the most probable
    class other than the given one `y` (the first on ties) and its probability, block by block."""
    best = np.empty(len(y), dtype=np.int64)
    value = np.empty(len(y), dtype=np.float64)
    for block in row_blocks(len(y)):
        if len(views) == 1:
            other = np.array(views[0][block], dtype=np.float64, copy=True)
        else:
            other = (views[0][block] + views[1][block]) / 2
        other[np.arange(len(other)), y[block]] = -1.0
        best[block] = other.argmax(axis=1)
        value[block] = other[np.arange(len(other)), best[block]]
    return best, value
