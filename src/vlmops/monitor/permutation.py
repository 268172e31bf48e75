"""Permutation tests for per-item values that take few distinct values (counts, rates, categories).

Answer lengths in words, refusal flags, finish reasons and repeated grounding scores have many ties,
and tests built for continuous data (KS) are then conservative: at α = 0.05 they alarm far less than
5 % of the time on healthy traffic, so they also miss real shifts. These tests reshuffle which items
belong to the reference, B times, and compare the observed statistic with the reshuffled ones:

- ``mean``: |mean(window) − mean(reference)| of a scalar per item (a rate, for 0/1 flags);
- ``chi2``: Pearson's χ² of the 2 × K table of category counts (reference vs window).

Ties between the observed statistic and reshuffled ones are counted half (the mid-p-value,
Lancaster 1961): p = (#{T_b > T} + ½ (1 + #{T_b = T})) / (B + 1). The plain ``1 + #{T_b ≥ T}`` rule
counts them whole and is conservative when the statistic has few values; the mid-p keeps the
false-alarm rate near α (tests/test_monitor_generative.py measures it). When every item has the
same value there is nothing to test and p = 1.

All B reshuffles are one (B, n + m) indicator matrix, so a statistic is a matrix product, as in
`monitor.mmd`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlmops.monitor.base import Detector, DriftInputError, DriftResult, as_matrix

STATISTICS = ("mean", "chi2")


def mid_p_value(observed: float, null: np.ndarray) -> float:
    """(#{null > observed} + ½ (1 + #{null = observed})) / (1 + B), ties within floating-point error."""
    tie = np.isclose(null, observed, rtol=1e-9, atol=1e-12)
    above = (null > observed) & ~tie
    return float((above.sum() + 0.5 * (1 + tie.sum())) / (1 + len(null)))


def reference_indicators(rng: np.random.Generator, n: int, m: int, b: int) -> np.ndarray:
    """(b, n + m) rows with n ones each at uniformly random places (1 = counted as reference)."""
    base = np.zeros(n + m)
    base[:n] = 1.0
    return rng.permuted(np.tile(base, (b, 1)), axis=1)


def mean_statistic(values: np.ndarray, n: int, indicators: np.ndarray) -> np.ndarray:
    """|mean of the window − mean of the reference| for each indicator row."""
    m = len(values) - n
    ref_sum = indicators @ values
    return np.abs((values.sum() - ref_sum) / m - ref_sum / n)


def chi2_statistic(onehot: np.ndarray, n: int, indicators: np.ndarray) -> np.ndarray:
    """Pearson χ² of the 2 × K count table for each indicator row (onehot: (n + m, K))."""
    total = onehot.sum(0)
    m = len(onehot) - n
    ref = indicators @ onehot
    win = total - ref
    expected_ref, expected_win = total * n / len(onehot), total * m / len(onehot)
    return ((ref - expected_ref) ** 2 / expected_ref + (win - expected_win) ** 2 / expected_win).sum(1)


class PermutationShiftDetector(Detector):
    """Has a per-item value (``mean``) or category (``chi2``) changed between reference and window?"""

    name = "permutation"
    state_fields = ("reference", "statistic", "n_permutations", "seed")

    def __init__(
        self, alpha: float = 0.05, statistic: str = "mean", n_permutations: int = 1000, seed: int = 0
    ) -> None:
        super().__init__(alpha)
        if statistic not in STATISTICS:
            raise DriftInputError(f"unknown statistic {statistic!r}; use one of {', '.join(STATISTICS)}")
        if n_permutations < 19:
            raise DriftInputError(f"n_permutations must be >= 19 to reach p < 0.05, got {n_permutations}")
        self.statistic, self.n_permutations, self.seed = statistic, n_permutations, seed
        self._calls = 0

    def _values(self, data, name: str, min_rows: int):
        if self.statistic == "chi2":
            values = [str(v) for v in data]
            if len(values) < min_rows:
                raise DriftInputError(f"{name} has {len(values)} items; a drift test needs {min_rows}")
            return values
        return as_matrix(data, name, min_rows=min_rows, features=1)[:, 0]

    def _fit(self, reference) -> None:
        values = self._values(reference, "reference", 2)
        self.reference = list(values) if self.statistic == "chi2" else values

    def _test(self, window) -> DriftResult:
        win = self._values(window, "window", 2)
        n, m = len(self.reference), len(win)
        calls = getattr(self, "_calls", 0)  # absent in a detector rebuilt with from_state
        rng = np.random.default_rng([self.seed, calls])
        self._calls = calls + 1
        observed_ind = np.zeros((1, n + m))
        observed_ind[0, :n] = 1.0
        indicators = reference_indicators(rng, n, m, self.n_permutations)
        if self.statistic == "chi2":
            pooled: Sequence = [*self.reference, *win]
            categories, inverse = np.unique(np.asarray(pooled, dtype=object).astype(str), return_inverse=True)
            data = np.eye(len(categories))[inverse]
            evidence = {
                "reference_counts": _counts(categories, inverse[:n]),
                "window_counts": _counts(categories, inverse[n:]),
            }
            statistic = chi2_statistic
            constant = len(categories) < 2
        else:
            data = np.concatenate([np.asarray(self.reference, dtype=np.float64), win])
            evidence = {"reference_mean": float(data[:n].mean()), "window_mean": float(data[n:].mean())}
            statistic = mean_statistic
            constant = bool(np.all(data == data[0]))
        observed = float(statistic(data, n, observed_ind)[0])
        threshold: float | None
        if constant:
            p, threshold = 1.0, None
            evidence["note"] = "every item has the same value: nothing to test"
        else:
            null = statistic(data, n, indicators)
            p, threshold = mid_p_value(observed, null), float(np.quantile(null, 1 - self.alpha))
        evidence.update(statistic=self.statistic, threshold=threshold, n_permutations=self.n_permutations)
        return DriftResult(self.name, observed, p, p < self.alpha, self.alpha, n, m, evidence)


def _counts(categories: np.ndarray, codes: np.ndarray) -> dict[str, int]:
    counts = np.bincount(codes, minlength=len(categories))
    return {str(c): int(k) for c, k in zip(categories, counts, strict=True) if k}
