"""Top-k inner-product neighbours for the audit: exact up to a size threshold, a faiss IVF index above.

Every audit search that would otherwise compare each record with every other (the label views' k-NN,
caption-swap candidates, the alignment check's best other caption) goes through `top_k`. While the
searched set (``base``) holds at most ``threshold`` rows the search is the exact blocked product it
always was, so results below the threshold are those of the exact search, bit for bit. Above it, a
faiss ``IndexIVFFlat`` over inner product (`NeighbourOptions.nlist` clusters, `nprobe` of them
searched per query) returns candidates whose similarities are then recomputed exactly; a query the
index cannot give ``k`` usable neighbours (too few in its probed lists, or all excluded) is searched
exactly. IVF rather than HNSW: its k-means training is seeded and its search order fixed, so an audit
gives the same findings on every run (HNSW's multithreaded build does not). The k-means (spherical,
`KMEANS_ITERATIONS`, at most `TRAIN_PER_LIST` rows per list) runs once per data set: the label views'
five folds place their lists by the same centres, trained on all rows (no labels are involved).

Recall against the exact search, and the time, on the emoji embeddings and a 100k set made from
them: `python bench/ann_recall.py` (bench/RESULTS.md). The threshold: `vlmops audit --ann-threshold N`,
``VLMOPS_ANN_THRESHOLD`` or `neighbour_options` around library calls.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

import numpy as np

from vlmops._optional import require
from vlmops.errors import VlmopsError

DEFAULT_THRESHOLD = 50_000
BLOCK = 2048
TRAIN_PER_LIST = 64  # k-means rows per IVF list at most (a seeded sample beyond)
KMEANS_ITERATIONS = 10
_TRAINED: OrderedDict[tuple, np.ndarray] = OrderedDict()


@dataclass(frozen=True)
class NeighbourOptions:
    """How `top_k` searches: exact while the base has at most `threshold` rows, else IVF.

    `nlist`: IVF clusters (None: 4 x sqrt(n)); `nprobe`: clusters searched per query (None: nlist / 32,
    at least 16).
    """

    threshold: int = DEFAULT_THRESHOLD
    nlist: int | None = None
    nprobe: int | None = None
    seed: int = 1234

    def clusters(self, n: int) -> tuple[int, int]:
        """(nlist, nprobe) for a base of `n` rows."""
        nlist = self.nlist or max(1, min(n // 39, int(4 * math.sqrt(n))))
        nprobe = self.nprobe or max(16, nlist // 32)
        return nlist, min(nprobe, nlist)


def _from_env() -> NeighbourOptions:
    raw = os.environ.get("VLMOPS_ANN_THRESHOLD")
    if raw is None:
        return NeighbourOptions()
    try:
        value = int(raw)
    except ValueError:
        raise VlmopsError(f"VLMOPS_ANN_THRESHOLD={raw!r} is not a whole number; set e.g. 50000") from None
    return NeighbourOptions(threshold=_check_threshold(value, "VLMOPS_ANN_THRESHOLD"))


def _check_threshold(value: int, what: str) -> int:
    if value < 0:
        raise VlmopsError(f"{what} must be 0 or more (rows searched exactly), got {value}")
    return value


_OPTIONS: ContextVar[NeighbourOptions | None] = ContextVar("vlmops_neighbour_options", default=None)


def current_options() -> NeighbourOptions:
    """The options in force: those set by `neighbour_options`, else from the environment."""
    return _OPTIONS.get() or _from_env()


@contextmanager
def neighbour_options(threshold: int | None = None, **changes) -> Iterator[NeighbourOptions]:
    """Use these neighbour-search options (e.g. ``threshold=0`` forces the index) inside the block."""
    options = current_options()
    if threshold is not None:
        options = replace(options, threshold=_check_threshold(threshold, "the ANN threshold"))
    options = replace(options, **changes)
    token = _OPTIONS.set(options)
    try:
        yield options
    finally:
        _OPTIONS.reset(token)


def _exact(
    queries: np.ndarray, base: np.ndarray, k: int, exclude, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """Blocked product: per query the k best base rows (unordered, as argpartition leaves them; for k = 1
    the first of tied maxima)."""
    ids = np.empty((len(queries), k), dtype=np.int64)
    sims = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block):
        part = queries[start : start + block] @ base.T
        if exclude is not None:
            part[exclude[0][start : start + block, None] == exclude[1][None, :]] = -np.inf
        # for k = 1 the first of tied maxima, as argmax gives it
        top = part.argmax(axis=1)[:, None] if k == 1 else np.argpartition(-part, k - 1, axis=1)[:, :k]
        ids[start : start + block] = top
        sims[start : start + block] = np.take_along_axis(part, top, axis=1)
    return ids, sims


def _fingerprint(rows: np.ndarray) -> tuple:
    """A cheap identity of an array: its shape and a hash of up to 256 evenly spaced rows."""
    step = max(1, len(rows) // 256)
    return rows.shape, hashlib.blake2b(rows[::step].tobytes(), digest_size=16).hexdigest()


def _centroids(train: np.ndarray, nlist: int, options: NeighbourOptions) -> np.ndarray:
    """Spherical k-means centres of `train` (a seeded sample of `TRAIN_PER_LIST` rows per list at most),
    remembered for the last few training sets: the folds of one label view share them."""
    faiss = require("faiss", extra="ann")
    key = (_fingerprint(train), nlist, options.seed)
    if key in _TRAINED:
        _TRAINED.move_to_end(key)
        return _TRAINED[key]
    sample = train
    if len(train) > TRAIN_PER_LIST * nlist:
        pick = np.random.default_rng(options.seed).choice(len(train), TRAIN_PER_LIST * nlist, replace=False)
        sample = train[np.sort(pick)]
    kmeans = faiss.Kmeans(
        train.shape[1], nlist, niter=KMEANS_ITERATIONS, seed=options.seed, spherical=True,
        max_points_per_centroid=TRAIN_PER_LIST,
    )  # fmt: skip
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    _TRAINED[key] = kmeans.centroids
    while len(_TRAINED) > 4:
        _TRAINED.popitem(last=False)
    return kmeans.centroids


def _ivf_index(base: np.ndarray, options: NeighbourOptions, train: np.ndarray | None = None):
    """An IVF-Flat inner-product index holding `base`, its lists the k-means cells of `train` (or base)."""
    faiss = require("faiss", extra="ann")
    train = base if train is None else train
    nlist, nprobe = options.clusters(len(train))  # one k-means for every base drawn from `train`
    quantizer = faiss.IndexFlatIP(base.shape[1])
    quantizer.add(_centroids(train, nlist, options))
    index = faiss.IndexIVFFlat(quantizer, base.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.add(base)
    index.nprobe = nprobe
    return index


def top_k(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    block: int = BLOCK,
    train: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query row, the `k` base rows of largest inner product: (ids (q, k), similarities (q, k)).

    `exclude` = (query groups, base groups): base rows in the query's group are never returned (in
    the exact search they come back with similarity -inf when fewer than k others exist; from the
    index, such a slot holds id 0 and similarity -inf). Exact while ``len(base)`` is at most the
    threshold of `current_options`; above it the faiss IVF index, with exact similarities. `train`: rows
    (e.g. all of a data set whose folds are searched in turn) to place the index's lists by, so that
    searches over parts of one set share one k-means (default: the base itself).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    if not 1 <= k <= len(base):
        raise VlmopsError(f"k={k} neighbours asked from a base of {len(base)} rows; need 1 <= k <= rows")
    options = current_options()
    if len(base) <= options.threshold:
        return _exact(queries, base, k, exclude, block)
    index = _ivf_index(base, options, train)
    extra = 0
    if exclude is not None:
        groups, counts = np.unique(exclude[1], return_counts=True)
        at = np.searchsorted(groups, exclude[0]).clip(0, len(groups) - 1)
        own = np.where(groups[at] == exclude[0], counts[at], 0)
        extra = int(min(own.max(initial=0), 4 * k + 64))
    fetch = min(len(base), k + extra)
    ids = np.zeros((len(queries), k), dtype=np.int64)
    sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    redo = [np.empty(0, dtype=np.int64)]
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        found = index.search(q, fetch)[1]
        usable = found >= 0
        if exclude is not None:
            usable &= exclude[0][start : start + block, None] != exclude[1][found.clip(0)]
        first = np.argsort(~usable, axis=1, kind="stable")[:, :k]  # the k best usable, best first
        take = np.take_along_axis(found, first, axis=1).clip(0)
        ids[start : start + len(q)] = take
        sims[start : start + len(q)] = np.einsum("qd,qkd->qk", q, base[take])
        redo.append(start + np.flatnonzero(usable.sum(axis=1) < k))
    rows = np.concatenate(redo)
    if len(rows):  # too few usable candidates from the probed lists: search these exactly
        sub = None if exclude is None else (exclude[0][rows], exclude[1])
        ids[rows], sims[rows] = _exact(queries[rows], base, k, sub, block)
    return ids, sims
