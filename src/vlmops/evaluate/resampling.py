"""Resampling for slice metrics: cluster tables, a vectorised cluster bootstrap and permutation tests.

All procedures work on per-(slice, cluster) outcome sums and item counts: a batch of bootstrap
replicates is a matrix product of drawn cluster multiplicities with those tables, and a batch of
permutations is a few ``bincount`` calls over shuffled slice labels, with the weight and label matrices
kept under `BATCH_ELEMENTS` elements. `vlmops.evaluate.slices` builds its per-slice CIs and gap p-values
from these helpers.
"""

from __future__ import annotations

import numpy as np

# Upper bound on array elements per vectorised batch (bootstrap weights, permutation label matrices).
BATCH_ELEMENTS = 1 << 22

# -------------------------------------------------------------------------------------------- bootstrap


def _cluster_tables(
    outcome: np.ndarray, codes: np.ndarray, cluster_codes: np.ndarray, n_slices: int, n_clusters: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n_slices, n_clusters) outcome sums and item counts."""
    flat = codes * n_clusters + cluster_codes
    size = n_slices * n_clusters
    sums = np.bincount(flat, weights=outcome, minlength=size).reshape(n_slices, n_clusters)
    counts = np.bincount(flat, minlength=size).astype(np.float64).reshape(n_slices, n_clusters)
    return sums, counts


def _draw_cluster_weights(rng: np.random.Generator, n_clusters: int, n_boot: int) -> np.ndarray:
    """(n_boot, n_clusters) multiplicities of each cluster when resampling n_clusters clusters."""
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot).astype(np.float64)


def _bootstrap_means(sums: np.ndarray, counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n_boot, n_slices) replicate means: weighted outcome sum / weighted item count (NaN when no items)."""
    num = weights @ sums.T
    den = weights @ counts.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _percentile_ci(replicates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile interval per column over its finite replicates, and how many replicates were used."""
    alpha = (1 - level) / 2
    k = replicates.shape[1]
    low, high = np.full(k, np.nan), np.full(k, np.nan)
    ok = np.isfinite(replicates)
    used = ok.sum(axis=0)
    for j in range(k):  # loop over slices, not replicates
        if used[j]:
            low[j], high[j] = np.quantile(replicates[ok[:, j], j], [alpha, 1 - alpha])
    return low, high, used


def _bootstrap(
    rng: np.random.Generator, sums: np.ndarray, counts: np.ndarray, n_boot: int, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster-bootstrap percentile CIs per slice (weights drawn once, in a few chunks only when huge)."""
    n_clusters = sums.shape[1]
    chunk = max(1, BATCH_ELEMENTS // n_clusters)
    reps = np.concatenate(
        [
            _bootstrap_means(sums, counts, _draw_cluster_weights(rng, n_clusters, min(chunk, n_boot - start)))
            for start in range(0, n_boot, chunk)
        ]
    )
    return _percentile_ci(reps, level)


# ------------------------------------------------------------------------------------------ permutation


def _gap_stat(sums: np.ndarray, counts: np.ndarray, min_n: int) -> np.ndarray:
    """Best-minus-worst mean per row of (P, k) sums/counts, over slices with n >= min_n (all if none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    present = counts > 0
    qualifying = present & (counts >= min_n)
    use = np.where(qualifying.any(axis=1, keepdims=True), qualifying, present)
    return np.where(use, means, -np.inf).max(axis=1) - np.where(use, means, np.inf).min(axis=1)


def _binned(labels: np.ndarray, weights: np.ndarray | None, n_slices: int) -> np.ndarray:
    """Per-row bincount of a (P, m) label matrix: (P, n_slices)."""
    p = labels.shape[0]
    flat = (labels + n_slices * np.arange(p)[:, None]).ravel()
    w = None if weights is None else np.tile(weights, p)
    return np.bincount(flat, weights=w, minlength=p * n_slices).reshape(p, n_slices).astype(np.float64)


def _perm_whole_cluster(
    rng: np.random.Generator,
    outcome: np.ndarray,
    codes: np.ndarray,
    cluster_codes: np.ndarray,
    n_slices: int,
    n_clusters: int,
    n_perm: int,
    min_n: int,
) -> np.ndarray:
    """Gap statistics with the field's values permuted across whole clusters (field constant per cluster)."""
    labels = np.empty(n_clusters, dtype=np.int64)
    labels[cluster_codes] = codes
    c_sums = np.bincount(cluster_codes, weights=outcome, minlength=n_clusters)
    c_counts = np.bincount(cluster_codes, minlength=n_clusters).astype(np.float64)
    batch = max(1, BATCH_ELEMENTS // n_clusters)
    stats = []
    for start in range(0, n_perm, batch):
        p = min(batch, n_perm - start)
        perm = rng.permuted(np.tile(labels, (p, 1)), axis=1)
        stats.append(_gap_stat(_binned(perm, c_sums, n_slices), _binned(perm, c_counts, n_slices), min_n))
    return np.concatenate(stats)


def _perm_within_cluster(
    rng: np.random.Generator,
    outcome: np.ndarray,
    codes: np.ndarray,
    cluster_codes: np.ndarray,
    n_slices: int,
    n_clusters: int,
    n_perm: int,
    min_n: int,
) -> np.ndarray:
    """Gap statistics with the field's values shuffled among the items of each cluster."""
    pairs = np.unique(cluster_codes * n_slices + codes)
    mixed = np.bincount(pairs // n_slices, minlength=n_clusters)[cluster_codes] > 1
    fixed_sums = np.bincount(codes[~mixed], weights=outcome[~mixed], minlength=n_slices)
    fixed_counts = np.bincount(codes[~mixed], minlength=n_slices).astype(np.float64)
    idx = np.flatnonzero(mixed)
    idx = idx[np.argsort(cluster_codes[idx], kind="stable")]  # items of a cluster are contiguous
    sub_cl, sub_codes, sub_y = cluster_codes[idx], codes[idx], outcome[idx]
    m = len(idx)
    batch = max(1, BATCH_ELEMENTS // m)
    stats = []
    for start in range(0, n_perm, batch):
        p = min(batch, n_perm - start)
        # Sorting by (cluster, random key) permutes positions within each contiguous cluster segment.
        keys = (sub_cl << 32) + rng.integers(0, 1 << 32, size=(p, m), dtype=np.int64)
        labels = sub_codes[np.argsort(keys, axis=1)]
        sums = _binned(labels, sub_y, n_slices) + fixed_sums
        counts = _binned(labels, None, n_slices) + fixed_counts
        stats.append(_gap_stat(sums, counts, min_n))
    return np.concatenate(stats)
