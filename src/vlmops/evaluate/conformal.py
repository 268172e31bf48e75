"""Split conformal prediction sets for classification (LAC and APS, optionally per group) and abstention.

`ConformalClassifier(alpha).fit(cal_probs, cal_labels)` picks a score threshold on held-out calibration
data so that `predict_sets` covers the true label with probability >= 1 - alpha on exchangeable data.
With `groups`, one threshold per group (Mondrian conformal) gives that guarantee within each group.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Literal

import numpy as np

from vlmops.errors import NotFittedError
from vlmops.evaluate.calibration import check_labels, check_probs

__all__ = [
    "ConformalClassifier",
    "aurc",
    "conformal_quantile",
    "coverage",
    "mean_set_size",
    "risk_coverage_curve",
]

Method = Literal["lac", "aps"]


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """Finite-sample conformal quantile: the ceil((n+1)(1-alpha))-th smallest score (inf if > n)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    if n == 0:
        raise ValueError("conformal calibration needs at least one calibration example")
    rank = math.ceil((n + 1) * (1 - alpha))
    if rank > n:
        return math.inf
    # The level-rank/n "inverted_cdf" quantile. np.quantile(..., method="higher") at that level
    # interpolates over n-1 gaps and returns the next order statistic up: one rank too conservative.
    return float(np.partition(scores, rank - 1)[rank - 1])


class ConformalClassifier:
    """Split conformal classifier on top of any probabilistic model (scikit-learn style).

    method="lac": score 1 - p_true, set {k: 1 - p_k <= q} (smallest sets on average).
    method="aps": score = sorted probability mass up to and including the true class (minus U * p_true
    when randomized), set = the classes whose score would be <= q. include_last_label=True instead
    keeps the whole prefix up to the class whose cumulative mass crosses q: valid but conservative.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        method: Method = "lac",
        randomized: bool = False,
        include_last_label: bool = False,
        seed: int = 0,
    ):
        self.alpha = alpha
        self.method = method
        self.randomized = randomized
        self.include_last_label = include_last_label
        self.seed = seed

    def _validate_params(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}: e.g. alpha=0.1 for 90% coverage")
        if self.method not in ("lac", "aps"):
            raise ValueError(f"method must be 'lac' or 'aps', got {self.method!r}")

    def _aps_parts(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-class mass strictly before the class in the descending order, and the class's own mass."""
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=1)
        before_sorted = np.cumsum(sorted_p, axis=1) - sorted_p
        before = np.empty_like(probs)
        np.put_along_axis(before, order, before_sorted, axis=1)
        return before, probs

    def _uniform(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(size=n) if self.randomized else np.ones(n)

    def _scores(self, probs: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = np.arange(len(labels))
        if self.method == "lac":
            return 1.0 - probs[rows, labels]
        before, own = self._aps_parts(probs)
        return before[rows, labels] + self._uniform(len(labels), rng) * own[rows, labels]

    def fit(
        self, cal_probs: np.ndarray, cal_labels: np.ndarray, groups: np.ndarray | None = None
    ) -> ConformalClassifier:
        """Set `threshold_` (pooled) and, when groups are given, `thresholds_` per group; returns self."""
        self._validate_params()
        probs, labels = check_probs(cal_probs, cal_labels)
        rng = np.random.default_rng(self.seed)
        scores = self._scores(probs, labels, rng)
        self.n_classes_ = probs.shape[1]
        self.threshold_ = conformal_quantile(scores, self.alpha)
        self.thresholds_: dict[Hashable, float] | None = None
        if groups is not None:
            groups = _check_groups(groups, len(labels))
            self.thresholds_ = {
                _key(g): conformal_quantile(scores[groups == g], self.alpha) for g in np.unique(groups)
            }
        return self

    def _thresholds_for(self, n: int, groups: np.ndarray | None) -> np.ndarray:
        if self.thresholds_ is None or groups is None:
            if self.thresholds_ is not None:
                raise ValueError("this classifier was fitted per group: pass groups= to predict_sets")
            return np.full(n, self.threshold_)
        groups = _check_groups(groups, n)
        return np.array([self.thresholds_.get(_key(g), self.threshold_) for g in groups], dtype=np.float64)

    def predict_sets(self, probs: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Boolean (n, k) prediction-set membership; unseen groups fall back to the pooled threshold."""
        if not hasattr(self, "threshold_"):
            raise NotFittedError("ConformalClassifier is not fitted: call fit(cal_probs, cal_labels) first")
        probs, _ = check_probs(probs)
        if probs.shape[1] != self.n_classes_:
            raise ValueError(
                f"probs have {probs.shape[1]} classes but the classifier was fitted on "
                f"{self.n_classes_}: use the same label set for calibration and prediction"
            )
        q = self._thresholds_for(probs.shape[0], groups)[:, None]
        if self.method == "lac":
            return (1.0 - probs) <= q
        before, own = self._aps_parts(probs)
        if self.include_last_label and not self.randomized:
            # Smallest prefix of the sorted classes whose mass reaches q, including the class that crosses
            # it. Always contains the score-consistent set, so it over-covers (by ~10 pp at alpha=0.2).
            return before < q
        u = self._uniform(probs.shape[0], np.random.default_rng(self.seed + 1))[:, None]
        # Score-consistent set: a class is in the set iff its APS score would be <= q, so coverage is exact.
        return before + u * own <= q


def _key(g: object) -> Hashable:
    return g.item() if isinstance(g, np.generic) else g  # type: ignore[return-value]


def _check_groups(groups: np.ndarray, n: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.shape[0] != n:
        raise ValueError(f"groups must have shape ({n},) to match probs, got {groups.shape}")
    return groups


def _check_sets(sets: np.ndarray) -> np.ndarray:
    sets = np.asarray(sets)
    if sets.ndim != 2 or sets.dtype != bool:
        raise ValueError(
            f"sets must be a boolean (n, k) array from predict_sets, got {sets.dtype} {sets.shape}"
        )
    return sets


def coverage(sets: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose true label is in its prediction set."""
    sets = _check_sets(sets)
    labels = check_labels(labels, sets.shape[0], sets.shape[1])
    return float(np.mean(sets[np.arange(len(labels)), labels]))


def mean_set_size(sets: np.ndarray) -> float:
    """Mean number of classes per prediction set."""
    return float(_check_sets(sets).sum(axis=1).mean())


def risk_coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (fraction kept) and risk (error rate among kept) when abstaining on the least confident."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct)
    if confidence.ndim != 1 or confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError(
            f"confidence and correct must be non-empty 1-d arrays of equal length, got "
            f"{confidence.shape} and {correct.shape}"
        )
    if not np.all(np.isfinite(confidence)):
        raise ValueError("confidence contains NaN/inf values: drop those rows")
    order = np.argsort(-confidence, kind="stable")
    errors = 1.0 - correct[order].astype(np.float64)
    kept = np.arange(1, confidence.size + 1)
    return kept / confidence.size, np.cumsum(errors) / kept


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve: mean risk over the n coverage levels 1/n, 2/n, ..., 1."""
    _, risk = risk_coverage_curve(confidence, correct)
    return float(risk.mean())
