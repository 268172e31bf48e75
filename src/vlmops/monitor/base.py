"""What every drift detector shares: `fit(reference)`, `test(window) -> DriftResult`, serialisable state.

A detector is fitted once on reference data (what the model saw when it was validated) and then
tests windows of production data. Its state is plain JSON (`state()` / `from_state`) so a monitor
process can persist it next to the alerts it raises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from vlmops.errors import NotFittedError, VlmopsError


class DriftInputError(VlmopsError, ValueError):
    """Reference or window data of the wrong shape or size."""


@dataclass(frozen=True)
class DriftResult:
    """One test of one window: the statistic, its p-value, the decision, and what supports it."""

    detector: str
    statistic: float
    p_value: float
    drifted: bool
    alpha: float
    n_reference: int
    n_window: int
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def as_matrix(x: Any, name: str, min_rows: int = 2, features: int | None = None) -> np.ndarray:
    """2-D float64 array with at least `min_rows` finite rows (and `features` columns when given),
    or a DriftInputError naming `name`."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DriftInputError(f"{name} must be a 2-D array (n, d), got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise DriftInputError(f"{name} has {arr.shape[0]} rows; a drift test needs at least {min_rows}")
    if features is not None and arr.shape[1] != features:
        raise DriftInputError(f"{name} has {arr.shape[1]} features, the reference {features}")
    if not np.isfinite(arr).all():
        raise DriftInputError(f"{name} contains NaN or infinite values; drop or impute them first")
    return arr


def check_alpha(alpha: float) -> float:
    """alpha in (0, 1)."""
    if not 0 < alpha < 1:
        raise DriftInputError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(alpha)


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """(1 + #{null >= observed}) / (1 + B): a valid p-value (never 0) for a right-tailed test."""
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


class Detector:
    """Base class: subclasses set `name`, implement `_fit` and `_test`, and list their state fields."""

    name: ClassVar[str] = "detector"
    state_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = check_alpha(alpha)
        self.fitted = False

    def fit(self, reference: Any) -> Detector:
        """Remember the reference distribution; returns self."""
        self._fit(reference)
        self.fitted = True
        return self

    def test(self, window: Any) -> DriftResult:
        """Test one window of production data against the reference."""
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(reference) first")
        return self._test(window)

    def _fit(self, reference: Any) -> None:
        raise NotImplementedError

    def _test(self, window: Any) -> DriftResult:
        raise NotImplementedError

    def state(self) -> dict:
        """JSON-ready parameters and fitted state."""
        out = {"detector": self.name, "alpha": self.alpha, "fitted": self.fitted}
        for key in self.state_fields:
            value = getattr(self, key)
            out[key] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    @classmethod
    def from_state(cls, state: dict) -> Detector:
        """Rebuild a detector saved with `state()`."""
        detector = cls.__new__(cls)
        detector.alpha, detector.fitted = state["alpha"], state["fitted"]
        for key in cls.state_fields:
            value = state[key]
            setattr(detector, key, np.asarray(value) if isinstance(value, list) else value)
        return detector
