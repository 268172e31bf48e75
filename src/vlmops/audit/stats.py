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
