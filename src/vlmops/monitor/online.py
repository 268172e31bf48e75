"""Sequential drift detection on a stream with a controlled false-alarm rate.

A two-sided CUSUM on a scalar signal standardised by the reference (alignment score, confidence, or
any per-item drift score): S⁺ₜ = max(0, S⁺ₜ₋₁ + zₜ − k), S⁻ₜ = max(0, S⁻ₜ₋₁ − zₜ − k), alarm when either
exceeds h. The false-alarm rate is set as an expected run time (ERT): the threshold h is calibrated by
simulating no-drift streams resampled from the reference itself (so skewed or discrete signals are
handled honestly) and bisecting h until their mean run length matches the ERT. Each simulated stream is
standardised by a bootstrap resample's mean and scale, so the uncertainty of estimating them from a
finite reference is part of the calibration (without it, the realised run time falls to about half).
"""

from __future__ import annotations

import numpy as np

from vlmops.errors import NotFittedError
from vlmops.monitor.base import DriftInputError, as_matrix


def run_lengths(z: np.ndarray, k: float, h: float) -> np.ndarray:
    """First alarm time (1-based) of a two-sided CUSUM for each row of z; len+1 when none."""
    n_streams, length = z.shape
    upper = np.zeros(n_streams)
    lower = np.zeros(n_streams)
    first = np.full(n_streams, length + 1)
    for t in range(length):
        upper = np.maximum(0.0, upper + z[:, t] - k)
        lower = np.maximum(0.0, lower - z[:, t] - k)
        fired = ((upper > h) | (lower > h)) & (first > length)
        first[fired] = t + 1
    return first


class OnlineCUSUM:
    """Streaming two-sided CUSUM with its threshold calibrated to an expected run time."""

    def __init__(self, ert: int = 500, k: float = 0.5, n_streams: int = 300, seed: int = 0) -> None:
        if ert < 10:
            raise DriftInputError(f"ert (expected steps between false alarms) must be >= 10, got {ert}")
        self.ert, self.k, self.n_streams, self.seed = ert, k, n_streams, seed
        self.threshold: float | None = None

    def fit(self, reference) -> OnlineCUSUM:
        """Standardise by the reference and calibrate the threshold; returns self."""
        x = as_matrix(reference, "reference", min_rows=20)[:, 0]
        self.mean, self.scale = float(x.mean()), float(x.std()) or 1.0
        rng = np.random.default_rng(self.seed)
        horizon = 6 * self.ert  # runs longer than this are censored; the mean is then a lower bound
        # Each simulated stream is standardised by the mean and scale of its own bootstrap resample of
        # the reference, so the threshold also absorbs the error of estimating them from finite data.
        boot = rng.choice(x, size=(self.n_streams, len(x)))
        centre, spread = boot.mean(1, keepdims=True), boot.std(1, keepdims=True) + 1e-12
        streams = (rng.choice(x, size=(self.n_streams, horizon)) - centre) / spread
        low, high = 0.0, 50.0
        for _ in range(30):
            mid = (low + high) / 2
            if run_lengths(streams, self.k, mid).mean() < self.ert:
                low = mid
            else:
                high = mid
        self.threshold = high
        self.reset()
        return self

    def reset(self) -> None:
        """Start a new stream (after an alarm has been handled)."""
        self.upper = self.lower = 0.0
        self.t = 0

    def update(self, value: float) -> bool:
        """Feed one observation; True when the detector alarms."""
        if self.threshold is None:
            raise NotFittedError("OnlineCUSUM is not fitted: call fit(reference) first")
        z = (float(value) - self.mean) / self.scale
        self.upper = max(0.0, self.upper + z - self.k)
        self.lower = max(0.0, self.lower - z - self.k)
        self.t += 1
        return self.upper > self.threshold or self.lower > self.threshold

    def state(self) -> dict:
        """JSON-ready state."""
        return {
            key: getattr(self, key)
            for key in ("ert", "k", "mean", "scale", "threshold", "upper", "lower", "t")
        }
