"""Calibration statistics for classifiers: ECE variants, Brier, NLL, reliability bins, temperature scaling.

All functions take `probs` as an (n, k) array of class probabilities (rows sum to 1) and `labels` as an
(n,) array of integer class indices; the top-1 confidence is `probs.max(axis=1)`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

__all__ = [
    "CalibrationReport",
    "ReliabilityDiagram",
    "adaptive_ece",
    "brier",
    "calibration_report",
    "ece",
    "fit_temperature",
    "mce",
    "nll",
    "reliability_diagram",
    "softmax",
]

ROW_SUM_TOL = 1e-3
Strategy = Literal["uniform", "quantile"]


def check_labels(labels: np.ndarray, n: int, k: int | None = None) -> np.ndarray:
    """Validate integer class labels of length `n` (and in range [0, k) when `k` is given)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match the scores, got {labels.shape}")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if k is not None and n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(
            f"labels must lie in [0, {k}) for {k} classes, got range [{labels.min()}, {labels.max()}]: "
            "check the label-to-column mapping"
        )
    return labels.astype(np.int64, copy=False)


def check_probs(probs: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate an (n, k) probability array (finite, in [0, 1], rows sum to 1) and optional labels."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(
            f"probs must be a non-empty (n, k) array with k >= 2 classes, got shape {probs.shape}: "
            "for binary scores pass np.stack([1 - p, p], axis=1)"
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"probs contain {int((~np.isfinite(probs)).sum())} NaN/inf values: drop those rows")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must lie in [0, 1]: pass probabilities, not logits (use softmax(logits))")
    sums = probs.sum(axis=1)
    bad = np.abs(sums - 1) > ROW_SUM_TOL
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} rows of probs do not sum to 1 (e.g. row {int(np.argmax(bad))} sums to "
            f"{sums[bad][0]:.4f}): normalise with probs / probs.sum(axis=1, keepdims=True) or use softmax"
        )
    if labels is not None:
        labels = check_labels(labels, probs.shape[0], probs.shape[1])
    return probs, labels


def _check_n_bins(n_bins: int) -> None:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin mean confidence, accuracy and count; empty bins have NaN confidence and accuracy."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    strategy: str = "uniform"

    @property
    def gaps(self) -> np.ndarray:
        """Absolute accuracy-confidence gap per bin (NaN for empty bins)."""
        return np.abs(self.accuracy - self.confidence)

    def ece(self) -> float:
        """Bin-size-weighted mean gap."""
        mask = self.count > 0
        return float(np.sum(self.count[mask] * self.gaps[mask]) / self.count.sum())

    def mce(self) -> float:
        """Largest gap over non-empty bins."""
        return float(np.max(self.gaps[self.count > 0]))

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN (empty bins) becomes None."""

        def clean(a: np.ndarray) -> list:
            return [None if isinstance(x, float) and math.isnan(x) else x for x in a.tolist()]

        return {
            "strategy": self.strategy,
            "edges": self.edges.tolist(),
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
            "count": self.count.tolist(),
        }


def reliability_diagram(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 15, strategy: Strategy = "uniform"
) -> ReliabilityDiagram:
    """Bin top-1 confidence (equal-width bins (lo, hi], or equal-mass with strategy="quantile")."""
    probs, labels = check_probs(probs, labels)
    return confidence_diagram(probs.max(axis=1), probs.argmax(axis=1) == labels, n_bins, strategy)


def confidence_diagram(
    conf: np.ndarray, correct: np.ndarray, n_bins: int = 15, strategy: Strategy = "uniform"
) -> ReliabilityDiagram:
    """Bin any confidence in [0, 1] against whether the answer was right (e.g. a generated answer's
    sequence probability against exact match); `reliability_diagram` is this for top-1 class scores."""
    _check_n_bins(n_bins)
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if conf.shape != correct.shape or conf.ndim != 1 or len(conf) == 0:
        raise ValueError(
            f"confidence and correctness must be equal-length 1-d, got {conf.shape}, {correct.shape}"
        )
    if np.any((conf < 0) | (conf > 1)) or not np.all(np.isfinite(conf)):
        raise ValueError("confidence must lie in [0, 1]")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        idx = np.searchsorted(edges[1:-1], conf, side="left")  # bin b holds (edges[b], edges[b+1]]
    elif strategy == "quantile":
        order = np.argsort(conf, kind="stable")
        idx = np.empty(len(conf), dtype=np.int64)
        for b, chunk in enumerate(np.array_split(order, n_bins)):
            idx[chunk] = b
        sorted_conf = conf[order]
        starts = [c[0] for c in np.array_split(sorted_conf, n_bins) if len(c)]
        edges = np.array([0.0, *starts[1:], 1.0]) if starts else np.array([0.0, 1.0])
        edges = np.concatenate([edges, np.full(n_bins + 1 - len(edges), 1.0)])
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return ReliabilityDiagram(edges, confidence, accuracy, count, strategy)


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins."""
    return reliability_diagram(probs, labels, n_bins, "uniform").ece()


def adaptive_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error with equal-mass (quantile) confidence bins."""
    return reliability_diagram(probs, labels, n_bins, "quantile").ece()


def mce(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Maximum calibration error: largest accuracy-confidence gap over non-empty equal-width bins."""
    return reliability_diagram(probs, labels, n_bins, "uniform").mce()


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over samples of sum_k (p_k - onehot_k)^2 (range [0, 2])."""
    probs, labels = check_probs(probs, labels)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class, with probabilities clipped to [eps, 1]."""
    probs, labels = check_probs(probs, labels)
    p_true = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p_true, eps, 1.0))))


def _check_logits(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ValueError(f"logits must be a non-empty (n, k) array with k >= 2, got shape {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain NaN/inf values: drop those rows before calibrating")
    return logits


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable row-wise softmax of logits / temperature."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    z = _check_logits(logits) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.01, 100.0)
) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (bounded search on log T)."""
    logits = _check_logits(logits)
    labels = check_labels(labels, logits.shape[0], logits.shape[1])
    if not 0 < bounds[0] < bounds[1]:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    rows = np.arange(len(labels))

    def objective(log_t: float) -> float:
        return float(-np.mean(log_softmax(logits / math.exp(log_t), axis=1)[rows, labels]))

    res = minimize_scalar(
        objective,
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(res.x))


@dataclass(frozen=True)
class CalibrationReport:
    """Summary calibration statistics of one set of predictions."""

    ece: float
    adaptive_ece: float
    mce: float
    brier: float
    nll: float
    n: int
    n_bins: int

    def to_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)


def calibration_report(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> CalibrationReport:
    """ECE, adaptive ECE, MCE, Brier and NLL in one typed result."""
    probs, labels = check_probs(probs, labels)
    uniform = reliability_diagram(probs, labels, n_bins, "uniform")
    return CalibrationReport(
        ece=uniform.ece(),
        adaptive_ece=adaptive_ece(probs, labels, n_bins),
        mce=uniform.mce(),
        brier=brier(probs, labels),
        nll=nll(probs, labels),
        n=int(probs.shape[0]),
        n_bins=int(n_bins),
    )
