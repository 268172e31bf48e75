"""Maximum mean discrepancy with an RBF kernel and a permutation test that reuses one kernel matrix.

Statistic: the unbiased MMD² between reference X (n rows) and window Y (m rows),
    MMD² = Σ_{i≠j} k(x_i, x_j) / n(n−1) + Σ_{i≠j} k(y_i, y_j) / m(m−1) − 2 Σ_{i,j} k(x_i, y_j) / nm,
with k(a, b) = exp(−‖a − b‖² / 2σ²) and σ from the median heuristic on the reference
(σ² = median of the off-diagonal squared distances / 2), as alibi-detect's MMDDrift does by default.

The permutation test reshuffles which rows count as "reference" B times. Instead of re-indexing the
(n+m)² kernel matrix per permutation, all B group indicators form one (B, n+m) matrix A and every
block sum comes from one matrix product: Σ_X = rowsum((A K) ∘ A), Σ_Y = rowsum((Ā K) ∘ Ā), Σ_XY from
the total. The diagonal is zeroed once, so the off-diagonal sums need no correction.
"""

from __future__ import annotations

import numpy as np

from vlmops.monitor.base import Detector, DriftInputError, DriftResult, as_matrix, permutation_p_value

PERMUTATION_CHUNK = 256  # permutations per matrix product (bounds memory at chunk x (n+m) floats)


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances, clipped at 0 against rounding."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_sigma(reference: np.ndarray) -> float:
    """Median-heuristic bandwidth on the reference: sqrt(median off-diagonal squared distance / 2)."""
    d = squared_distances(reference, reference)
    off = d[~np.eye(len(d), dtype=bool)]
    sigma = float(np.sqrt(0.5 * np.median(off)))
    return sigma if sigma > 0 else 1.0


def rbf_kernel(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    """exp(−‖a − b‖² / 2σ²)."""
    return np.exp(-squared_distances(a, b) / (2.0 * sigma * sigma))


def mmd2_permutations(kernel: np.ndarray, n: int, indicators: np.ndarray) -> np.ndarray:
    """Unbiased MMD² for each row of `indicators` (1 = reference, n ones per row); kernel diagonal zeroed."""
    total = kernel.sum()
    m = kernel.shape[0] - n
    out = np.empty(len(indicators))
    for start in range(0, len(indicators), PERMUTATION_CHUNK):
        a = indicators[start : start + PERMUTATION_CHUNK]
        ak = a @ kernel
        sum_xx = (ak * a).sum(1)
        row = kernel.sum(0)
        sum_xy = (a * row).sum(1) - sum_xx  # Σ over x in X, y in Y of k(x, y)
        sum_yy = total - sum_xx - 2.0 * sum_xy
        out[start : start + len(a)] = sum_xx / (n * (n - 1)) + sum_yy / (m * (m - 1)) - 2.0 * sum_xy / (n * m)
    return out


class MMDDetector(Detector):
    """Two-sample MMD² test between reference embeddings and a window of production embeddings."""

    name = "mmd"
    state_fields = ("reference", "sigma", "n_permutations", "seed")

    def __init__(
        self, alpha: float = 0.05, n_permutations: int = 1000, sigma: float | None = None, seed: int = 0
    ):
        super().__init__(alpha)
        if n_permutations < 19:
            raise DriftInputError(f"n_permutations must be >= 19 to reach p < 0.05, got {n_permutations}")
        self.n_permutations, self.sigma, self.seed = n_permutations, sigma, seed
        self._calls = 0

    def _fit(self, reference) -> None:
        self.reference = as_matrix(reference, "reference", min_rows=3)
        if self.sigma is None:
            self.sigma = median_sigma(self.reference)

    def _test(self, window) -> DriftResult:
        x = self.reference
        y = as_matrix(window, "window", min_rows=2, features=x.shape[1])
        n, m = len(x), len(y)
        pooled = np.concatenate([x, y])
        kernel = rbf_kernel(pooled, pooled, self.sigma)
        np.fill_diagonal(kernel, 0.0)
        observed_ind = np.zeros((1, n + m))
        observed_ind[0, :n] = 1.0
        observed = float(mmd2_permutations(kernel, n, observed_ind)[0])
        rng = np.random.default_rng([self.seed, self._calls])
        self._calls += 1
        order = np.argsort(rng.random((self.n_permutations, n + m)), axis=1)
        indicators = (order < n).astype(np.float64)  # a uniformly random n-subset per row
        null = mmd2_permutations(kernel, n, indicators)
        p = permutation_p_value(observed, null)
        threshold = float(np.quantile(null, 1 - self.alpha))
        return DriftResult(
            self.name,
            observed,
            p,
            p < self.alpha,
            self.alpha,
            n,
            m,
            {"sigma": self.sigma, "threshold": threshold, "n_permutations": self.n_permutations},
        )
