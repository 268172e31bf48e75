"""Class probabilities that are one value per row except at a few columns, stored as such.

An out-of-fold k-NN vote (`labels._knn_fold`) gives a row at most k classes above the smoothing floor,
so an (items, classes) matrix of it is almost all floor: at 1,923 classes and 1M items four such
matrices are 57 GiB dense, 0.5 GiB here. `VoteProbs` keeps per row the voted columns, their values and
the floor; every reading the label checks make (a cell, the argmax, the best class other than the label,
confident learning's per-class thresholds) is computed from those, with the dense matrix's exact values
and its tie rule (the lowest column wins), so findings do not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlmops.audit.stats import other_class as stats_other_class
from vlmops.audit.stats import row_blocks


@dataclass(frozen=True)
class VoteProbs:
    """(n, n_classes) probabilities: `floor[r]` everywhere in row r except at `cols[r]` (-1 = unused
    slot), where they are `values[r]` (-inf in unused slots)."""

    cols: np.ndarray  # (n, width) int32
    values: np.ndarray  # (n, width) float64
    floor: np.ndarray  # (n,) float64
    n_classes: int

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.floor), self.n_classes)

    def __len__(self) -> int:
        return len(self.floor)

    @property
    def nbytes(self) -> int:
        return self.cols.nbytes + self.values.nbytes + self.floor.nbytes

    def take(self, rows: np.ndarray) -> VoteProbs:
        """These rows only."""
        return VoteProbs(self.cols[rows], self.values[rows], self.floor[rows], self.n_classes)

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The probabilities at cells (rows[i], cols[i])."""
        rows, cols = np.broadcast_arrays(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))
        hit = self.cols[rows] == cols[..., None]
        slot = hit.argmax(axis=-1)
        return np.where(hit.any(axis=-1), self.values[rows, slot], self.floor[rows])

    def to_dense(self) -> np.ndarray:
        """The (n, n_classes) matrix (for tests and small data)."""
        out = np.repeat(self.floor[:, None], self.n_classes, axis=1)
        r, s = np.nonzero(self.cols >= 0)
        out[r, self.cols[r, s]] = self.values[r, s]
        return out

    @classmethod
    def from_dense(cls, probs: np.ndarray) -> VoteProbs:
        """The same matrix with each row's minimum as its floor (as wide as its widest row needs)."""
        probs = np.asarray(probs, dtype=np.float64)
        floor = probs.min(axis=1) if probs.shape[1] else np.zeros(len(probs))
        off = probs != floor[:, None]
        return cls.pack(off, probs, floor)

    @classmethod
    def pack(cls, keep: np.ndarray, probs: np.ndarray, floor: np.ndarray, width: int = 0) -> VoteProbs:
        """Rows of `probs` as VoteProbs keeping the cells `keep` (the others must equal the floor), in
        `width` slots per row (at least as many as the fullest row needs)."""
        width = max(int(keep.sum(axis=1).max(initial=0)), width, 1)
        cols = np.full((len(probs), width), -1, dtype=np.int32)
        values = np.full((len(probs), width), -np.inf)
        r, c = np.nonzero(keep)
        slot = np.arange(len(r)) - np.searchsorted(r, r)  # position within its row (r is sorted)
        cols[r, slot], values[r, slot] = c, probs[r, c]
        return cls(cols, values, np.asarray(floor, dtype=np.float64), probs.shape[1])

    def mean(self, other: VoteProbs) -> VoteProbs:
        """(self + other) / 2, cell by cell as the dense matrices would give it."""
        if self.shape != other.shape:
            raise ValueError(f"shapes differ: {self.shape} and {other.shape}")
        cols = np.concatenate([self.cols, other.cols], axis=1)
        order = np.sort(cols, axis=1)
        dup = np.zeros(order.shape, dtype=bool)
        dup[:, 1:] = order[:, 1:] == order[:, :-1]
        order[dup] = -1
        values = np.empty(order.shape, dtype=np.float64)
        for block in row_blocks(len(self)):
            rows = np.arange(len(self))[block][:, None]
            used = order[block] >= 0
            safe = np.where(used, order[block], 0)
            values[block] = np.where(used, (self.at(rows, safe) + other.at(rows, safe)) / 2, -np.inf)
        return VoteProbs(order.astype(np.int32), values, (self.floor + other.floor) / 2, self.n_classes)


def _smallest_free(cols: np.ndarray, exclude: np.ndarray | None, n_classes: int) -> np.ndarray:
    """Per row the smallest class index in none of `cols` (nor `exclude`), or -1 when there is none."""
    width = cols.shape[1] + 2
    candidates = np.arange(width)
    taken = (cols[:, :, None] == candidates).any(axis=1)
    if exclude is not None:
        taken |= exclude[:, None] == candidates
    free = ~taken & (candidates < n_classes)
    return np.where(free.any(axis=1), free.argmax(axis=1), -1)


def _pick(
    entry_value: np.ndarray, cols: np.ndarray, floor_col: np.ndarray, floor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dense argmax from the best entry (-inf where none) and the best floor cell (-1 where none): the
    larger value wins, the lower column on a tie. Returns (column, value); (-1, -inf) where neither."""
    best = entry_value.max(axis=1)
    big = np.iinfo(np.int64).max
    best_col = np.where(entry_value == best[:, None], cols.astype(np.int64), big).min(axis=1)
    has_entry = np.isfinite(best)
    has_floor = floor_col >= 0
    floor_value = np.where(has_floor, floor, -np.inf)
    take_floor = has_floor & (
        ~has_entry | (floor_value > best) | ((floor_value == best) & (floor_col < best_col))
    )
    col = np.where(take_floor, floor_col, np.where(has_entry, best_col, -1))
    return col.astype(np.int64), np.where(take_floor, floor_value, best)


def argmax_other(probs: VoteProbs, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row the most probable class other than `exclude[r]` (every class without it) and its
    probability, the lowest column on ties: as `np.argmax` on the dense rows with that cell set to -1."""
    n = len(probs)
    col = np.empty(n, dtype=np.int64)
    value = np.empty(n, dtype=np.float64)
    for block in row_blocks(n):
        cols, values = probs.cols[block], probs.values[block]
        skip = None if exclude is None else np.asarray(exclude[block], dtype=np.int64)
        entry = values if skip is None else np.where(cols == skip[:, None], -np.inf, values)
        entry = np.where(cols >= 0, entry, -np.inf)
        col[block], value[block] = _pick(
            entry, cols, _smallest_free(cols, skip, probs.n_classes), probs.floor[block]
        )
    if exclude is not None:  # one class only: the dense argmax lands on the excluded cell, set to -1
        none = col < 0
        col[none], value[none] = 0, -1.0
    else:
        col[col < 0] = 0
    return col, value


def _prefix_smallest(order: np.ndarray, keep: int) -> np.ndarray:
    """Row m: the `keep` smallest class indices among order[:m] (padded with -1)."""
    out = np.full((len(order) + 1, keep), -1, dtype=np.int64)
    current: list[int] = []
    for m, c in enumerate(order, start=1):
        current = sorted([*current, int(c)])[:keep]
        out[m, : len(current)] = current
    return out


def confident_classes(probs: VoteProbs, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, among the classes j with p_j >= thresholds[j], the most probable (lowest on ties), and
    whether there is any: confident learning's confident class, as on the dense rows."""
    n = len(probs)
    order = np.argsort(thresholds, kind="stable")
    cutoffs = thresholds[order]
    smallest = _prefix_smallest(order, probs.cols.shape[1] + 1)
    confident = np.empty(n, dtype=np.int64)
    counted = np.empty(n, dtype=bool)
    for block in row_blocks(n):
        cols, values, floor = probs.cols[block], probs.values[block], probs.floor[block]
        used = cols >= 0
        above = used & (values >= thresholds[np.where(used, cols, 0)])
        entry = np.where(above, values, -np.inf)
        candidates = smallest[np.searchsorted(cutoffs, floor, side="right")]  # floor cells at or above
        free = (candidates >= 0) & ~(candidates[:, :, None] == cols[:, None, :]).any(axis=2)
        floor_col = np.where(free.any(axis=1), candidates[np.arange(len(cols)), free.argmax(axis=1)], -1)
        col, _ = _pick(entry, cols, floor_col, floor)
        counted[block] = col >= 0
        confident[block] = np.maximum(col, 0)
    return confident, counted


def cells(probs: np.ndarray | VoteProbs, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """probs[rows, cols] of a dense matrix or a VoteProbs."""
    if isinstance(probs, VoteProbs):
        return probs.at(rows, cols)
    return np.asarray(probs)[rows, cols]


def row_argmax(probs: np.ndarray | VoteProbs) -> np.ndarray:
    """probs.argmax(axis=1) of a dense matrix or a VoteProbs."""
    if isinstance(probs, VoteProbs):
        return argmax_other(probs)[0]
    return np.asarray(probs).argmax(axis=1)


def other_class(views: tuple, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`stats.other_class` (the most probable class other than `y` over the mean of one or two views and
    its probability) for dense matrices and VoteProbs alike."""
    if not any(isinstance(v, VoteProbs) for v in views):
        return stats_other_class(views, y)
    sparse = [v if isinstance(v, VoteProbs) else VoteProbs.from_dense(v) for v in views]
    return argmax_other(sparse[0] if len(sparse) == 1 else sparse[0].mean(sparse[1]), np.asarray(y))
