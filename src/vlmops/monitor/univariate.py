"""Drift tests built from univariate two-sample tests, combined with Benjamini–Hochberg.

- `KSPCADetector`: project embeddings on the reference's principal components, KS-test each one.
- `PredictionShiftDetector` (BBSD): KS-test each softmax output of the zero-shot head, plus a χ² test
  on the predicted-label frequencies; the smaller (BH-adjusted) p-value decides.
- `KSDetector`: a scalar signal (image–text alignment, confidence, brightness ...).

Under the global null the BH-adjusted minimum p-value is below α with probability ≤ α (for independent
or positively dependent tests), so the false-alarm rate stays at the nominal level.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from vlmops.monitor.base import Detector, DriftInputError, DriftResult, as_matrix


def bh_adjust(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (scipy's false_discovery_control)."""
    return stats.false_discovery_control(np.clip(np.asarray(p_values, dtype=np.float64), 0, 1), method="bh")


def ks_bh_result(name: str, alpha: float, reference: np.ndarray, window: np.ndarray, key: str) -> DriftResult:
    """KS per column, BH-adjusted; the decision and statistic are those of the most significant column."""
    stat, p = ks_columns(reference, window)
    adjusted = bh_adjust(p)
    worst = int(np.argmin(adjusted))
    evidence = {key: worst, "statistics": stat.tolist(), "p_adjusted": adjusted.tolist()}
    return DriftResult(
        name,
        float(stat[worst]),
        float(adjusted[worst]),
        bool(adjusted[worst] < alpha),
        alpha,
        len(reference),
        len(window),
        evidence,
    )


def ks_columns(reference: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KS statistic and p-value per column (vectorised over columns)."""
    result = stats.ks_2samp(reference, window, axis=0)
    return np.atleast_1d(result.statistic), np.atleast_1d(result.pvalue)


class KSDetector(Detector):
    """KS test on one or more scalar features, BH-combined across features."""

    name = "ks"
    state_fields = ("reference",)

    def _fit(self, reference) -> None:
        self.reference = as_matrix(reference, "reference")

    def _test(self, window) -> DriftResult:
        y = as_matrix(window, "window", features=self.reference.shape[1])
        return ks_bh_result(self.name, self.alpha, self.reference, y, "feature")


class KSPCADetector(Detector):
    """KS tests on the top principal components of the reference, BH-combined."""

    name = "ks_pca"
    state_fields = ("mean", "components", "projected", "n_components")

    def __init__(self, alpha: float = 0.05, n_components: int = 10) -> None:
        super().__init__(alpha)
        self.n_components = n_components

    def _fit(self, reference) -> None:
        x = as_matrix(reference, "reference", min_rows=3)
        self.mean = x.mean(0)
        k = min(self.n_components, x.shape[1], len(x) - 1)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.components = vt[:k]
        self.projected = (x - self.mean) @ self.components.T

    def _test(self, window) -> DriftResult:
        y = as_matrix(window, "window", features=self.components.shape[1])
        return ks_bh_result(
            self.name, self.alpha, self.projected, (y - self.mean) @ self.components.T, "component"
        )


def label_frequency_test(reference_labels: np.ndarray, window_labels: np.ndarray, min_expected: float = 5.0):
    """χ² test of predicted-label counts; classes too rare for the χ² approximation are pooled as 'other'."""
    classes, inverse = np.unique(np.concatenate([reference_labels, window_labels]), return_inverse=True)
    n = len(reference_labels)
    table = np.stack(
        [np.bincount(inverse[:n], minlength=len(classes)), np.bincount(inverse[n:], minlength=len(classes))]
    ).astype(float)
    expected_min = table.sum(0) * min(table.sum(1)) / table.sum()
    keep = expected_min >= min_expected
    pooled = np.concatenate([table[:, keep], table[:, ~keep].sum(1, keepdims=True)], axis=1)
    pooled = pooled[:, pooled.sum(0) > 0]
    if pooled.shape[1] < 2:
        return 0.0, 1.0, int(keep.sum())
    chi2, p, _, _ = stats.chi2_contingency(pooled, correction=False)
    return float(chi2), float(p), int(keep.sum())


class PredictionShiftDetector(Detector):
    """Black-box shift detection on softmax outputs: KS per class (BH) and χ² on predicted labels."""

    name = "prediction_shift"
    state_fields = ("probs", "n_classes")

    def __init__(self, alpha: float = 0.05, n_classes: int = 20) -> None:
        super().__init__(alpha)
        self.n_classes = n_classes  # KS on the classes with the most reference mass (all when fewer)

    def _fit(self, reference) -> None:
        probs = as_matrix(reference, "reference probabilities")
        self.probs = probs

    def _test(self, window) -> DriftResult:
        probs = as_matrix(window, "window probabilities")
        if probs.shape[1] != self.probs.shape[1]:
            raise DriftInputError(f"window has {probs.shape[1]} classes, the reference {self.probs.shape[1]}")
        top = np.argsort(-self.probs.mean(0))[: self.n_classes]
        _, p_ks = ks_columns(self.probs[:, top], probs[:, top])
        chi2, p_chi2, kept = label_frequency_test(self.probs.argmax(1), probs.argmax(1))
        adjusted = bh_adjust(np.append(p_ks, p_chi2))
        p = float(adjusted.min())
        return DriftResult(
            self.name,
            float(chi2),
            p,
            p < self.alpha,
            self.alpha,
            len(self.probs),
            len(probs),
            {"p_ks_min": float(adjusted[:-1].min()), "p_chi2": float(adjusted[-1]), "chi2_classes": kept},
        )
