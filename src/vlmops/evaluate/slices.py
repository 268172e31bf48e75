"""Slice-based fairness metrics: per-slice means with cluster-bootstrap CIs and a permutation test for gaps.

A *slice* is the set of items sharing one value of a manifest column (e.g. ``vendor == "apple"``) or of an
intersection of columns (``("skin_tone", "gender")`` gives slices like ``"dark×female"``). For each slice we
report the mean of a per-item outcome (1.0 when top-1 is correct, conformal coverage, or a bounded score
such as a caption's CIDEr-D), a percentile bootstrap confidence interval, and per field the worst and best
slice, their gap and a permutation p-value for that gap.

Items are not independent: the vendor and skin-tone variants of one emoji share a `concept`, so both the
bootstrap and the permutation test work on *clusters* of items (pass ``clusters=frame["concept"]``). Without
clusters every item is its own cluster and the usual i.i.d. procedures result. The bootstrap and
permutation machinery lives in `vlmops.evaluate.resampling`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from pandas.api.types import is_object_dtype, is_scalar

from vlmops.evaluate.resampling import (
    _bootstrap,
    _cluster_tables,
    _gap_stat,
    _perm_whole_cluster,
    _perm_within_cluster,
)
from vlmops.jsonable import to_jsonable

__all__ = [
    "FieldReport",
    "SliceReport",
    "SliceStat",
    "default_slice_fields",
    "slice_metrics",
]

MISSING = "missing"
JOIN = "×"
TIE_TOL = 1e-12

Field = str | Sequence[str]


@dataclass(frozen=True)
class SliceStat:
    """Outcome statistics of one slice; `n_boot_used` is set only when some replicates lacked the slice."""

    value: str
    n: int
    n_clusters: int
    mean: float
    ci_low: float
    ci_high: float
    warning: str | None = None
    n_boot_used: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN becomes None."""
        return to_jsonable(asdict(self))  # type: ignore[return-value]


@dataclass(frozen=True)
class FieldReport:
    """All slices of one field, the worst/best slice values, their gap and the gap's permutation p-value.

    `permutation` is ``"item"`` (no clusters), ``"whole-cluster"``, ``"within-cluster"`` or ``"none"``
    (a single slice, or no permutations requested).
    """

    field: str
    slices: list[SliceStat]
    worst: str | None
    best: str | None
    max_gap: float
    p_value: float | None
    permutation: str
    note: str | None = None

    def stat(self, value: str) -> SliceStat:
        """The SliceStat of one slice value."""
        for s in self.slices:
            if s.value == value:
                return s
        raise KeyError(
            f"no slice {value!r} in field {self.field!r}: slices are {[s.value for s in self.slices]}"
        )

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN becomes None."""
        return to_jsonable(asdict(self))  # type: ignore[return-value]


@dataclass(frozen=True)
class SliceReport:
    """Slice metrics for several fields, with the settings that produced them."""

    metric: str
    level: float
    n_boot: int
    n_perm: int
    min_n: int
    fields: list[FieldReport]

    @property
    def max_gap(self) -> float:
        """Largest best-minus-worst gap over all fields (0 when there are none)."""
        return max((f.max_gap for f in self.fields), default=0.0)

    @property
    def worst_slice(self) -> tuple[str, str, float] | None:
        """(field, value, mean) of the lowest-mean slice with n >= min_n (any slice if none qualifies)."""
        stats = [(f.field, f.stat(f.worst)) for f in self.fields if f.worst is not None]
        cands = [(field, s.value, s.mean, s.n) for field, s in stats]
        cands = [c for c in cands if c[3] >= self.min_n] or cands
        if not cands:
            return None
        field, value, mean, _ = min(cands, key=lambda c: c[2])
        return field, value, mean

    def to_dict(self) -> dict:
        """JSON-ready dict (with `max_gap` and `worst_slice` included); NaN becomes None."""
        worst = self.worst_slice
        return to_jsonable(
            {
                "metric": self.metric,
                "level": self.level,
                "n_boot": self.n_boot,
                "n_perm": self.n_perm,
                "min_n": self.min_n,
                "max_gap": self.max_gap,
                "worst_slice": None
                if worst is None
                else {"field": worst[0], "value": worst[1], "mean": worst[2]},
                "fields": [f.to_dict() for f in self.fields],
            }
        )  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- inputs


def _non_scalar(s: pd.Series) -> object | None:
    """The first non-null value of an object column that is not a hashable scalar (list, dict...), if any."""
    if not is_object_dtype(s.dtype):
        return None
    return next((v for v in s.dropna() if not is_scalar(v)), None)


def default_slice_fields(frame: pd.DataFrame, candidates: Sequence[str], max_values: int = 20) -> list[str]:
    """Candidate columns of scalar values with 2 <= distinct non-null values <= max_values, in given order."""
    out = []
    for col in candidates:
        if col not in frame.columns:
            continue
        s = frame[col]
        if not isinstance(s, pd.Series) or _non_scalar(s) is not None:
            continue
        if 2 <= s.nunique(dropna=True) <= max_values:
            out.append(col)
    return out


def _check_outcome(
    outcome: np.ndarray, frame: pd.DataFrame, outcome_range: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    if len(frame) == 0:
        raise ValueError(
            "frame is empty: slice metrics need at least one evaluated item; check the split/filter that "
            "produced the manifest"
        )
    y = np.asarray(outcome, dtype=np.float64)
    if y.ndim != 1 or y.shape[0] != len(frame):
        raise ValueError(
            f"outcome has shape {y.shape} but frame has {len(frame)} rows: pass one outcome per frame row, "
            "in the frame's row order"
        )
    bad = ~np.isfinite(y)
    if bad.any():
        raise ValueError(
            f"outcome contains {int(bad.sum())} NaN/inf values: drop those rows from both outcome and frame"
        )
    low, high = outcome_range
    slack = 1e-9 * max(1.0, high - low)  # rounding, e.g. a perfect caption's CIDEr-D of 10.000000000002
    if y.min() < low - slack or y.max() > high + slack:
        raise ValueError(
            f"outcome must lie in [{low:g}, {high:g}], got range [{y.min():g}, {y.max():g}]: pass per-item "
            "correctness (1.0 = top-1 correct) or coverage, or name the score's range in outcome_range"
        )
    return np.clip(y, low, high)


def _check_params(min_n: int, n_boot: int, n_perm: int, level: float, seed: int) -> None:
    for name, value, low in [
        ("min_n", min_n, 1),
        ("n_boot", n_boot, 0),
        ("n_perm", n_perm, 0),
        ("seed", seed, 0),
    ]:
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), e.g. 0.95, got {level!r}")


def _cluster_codes(clusters: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Dense cluster ids 0..C-1 per item (each item its own cluster when `clusters` is None)."""
    if clusters is None:
        return np.arange(n, dtype=np.int64), n
    arr = np.asarray(clusters)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"clusters has shape {arr.shape} but frame has {n} rows: pass one cluster id per row "
            "(e.g. frame['concept'])"
        )
    codes, uniques = pd.factorize(arr)
    if (codes < 0).any():
        raise ValueError(
            f"clusters contain {int((codes < 0).sum())} missing ids: fill them (e.g. with the item id) so "
            "every item belongs to a cluster"
        )
    return codes.astype(np.int64), len(uniques)


def _field_columns(field: Field, frame: pd.DataFrame) -> tuple[str, ...]:
    if isinstance(field, str):
        cols: tuple = (field,)
    elif isinstance(field, Sequence) and len(field) > 0 and all(isinstance(c, str) for c in field):
        cols = tuple(field)
    else:
        raise ValueError(
            f"a slice field must be a column name or a tuple of column names (an intersection), got {field!r}"
        )
    for col in cols:
        if col not in frame.columns:
            raise ValueError(
                f"unknown slice field {col!r}: available columns are {list(frame.columns)}; pass one of "
                "them (or a tuple of them for an intersection)"
            )
    return cols


def _column_codes(s: pd.Series, col: str) -> tuple[np.ndarray, list[str]]:
    """Codes 0..k-1 ordered by value (missing values last, as slice "missing") and the slice names."""
    bad = _non_scalar(s)
    if bad is not None:
        raise ValueError(
            f"column {col!r} holds non-scalar values (e.g. a {type(bad).__name__}): slice by a column of "
            "scalar values such as strings"
        )
    missing = s.isna().to_numpy()
    codes, uniques = pd.factorize(s[~missing], sort=False)
    values = list(uniques)
    labels = [str(v) for v in values]
    try:
        order = sorted(range(len(values)), key=lambda i: values[i])
    except TypeError:
        order = sorted(range(len(values)), key=lambda i: labels[i])
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    full = np.full(len(s), len(values), dtype=np.int64)
    full[~missing] = rank[codes]
    names = [labels[i] for i in order]
    if missing.any():
        names.append(MISSING if MISSING not in names else f"({MISSING})")
    return full, names


def _slice_codes(frame: pd.DataFrame, cols: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Per-item slice codes and slice names for one column or an intersection of columns."""
    parts = [_column_codes(frame[c], c) for c in cols]
    if len(parts) == 1:
        return parts[0]
    stacked = np.stack([p[0] for p in parts], axis=1)
    uniq, inverse = np.unique(stacked, axis=0, return_inverse=True)
    names = [JOIN.join(parts[j][1][u[j]] for j in range(len(cols))) for u in uniq]
    return inverse.reshape(-1).astype(np.int64), names


# ----------------------------------------------------------------------------------------------- report


def _field_report(
    name: str,
    codes: np.ndarray,
    names: list[str],
    outcome: np.ndarray,
    cluster_codes: np.ndarray,
    n_clusters: int,
    clustered: bool,
    min_n: int,
    n_boot: int,
    n_perm: int,
    level: float,
    seed: int,
) -> FieldReport:
    k = len(names)
    sums, counts = _cluster_tables(outcome, codes, cluster_codes, k, n_clusters)
    n = counts.sum(axis=1)
    means = sums.sum(axis=1) / n
    boot_seq, perm_seq = np.random.SeedSequence([seed, zlib.crc32(name.encode())]).spawn(2)

    if n_boot:
        low, high, used = _bootstrap(np.random.default_rng(boot_seq), sums, counts, n_boot, level)
    else:
        low, high, used = np.full(k, np.nan), np.full(k, np.nan), np.zeros(k, dtype=np.int64)

    slices = []
    for j in range(k):
        warnings = []
        if n[j] < min_n:
            warnings.append(
                f"only n={int(n[j])} items (< min_n={min_n}): treat this slice's numbers as anecdotal"
            )
        dropped = bool(n_boot) and used[j] < n_boot
        if dropped:
            warnings.append(
                f"CI from {int(used[j])} of {n_boot} bootstrap replicates (the others drew none of this "
                f"slice's {int((counts[j] > 0).sum())} clusters)"
            )
        slices.append(
            SliceStat(
                value=names[j],
                n=int(n[j]),
                n_clusters=int((counts[j] > 0).sum()),
                mean=float(means[j]),
                ci_low=float(low[j]),
                ci_high=float(high[j]),
                warning="; ".join(warnings) or None,
                n_boot_used=int(used[j]) if dropped else None,
            )
        )

    notes = []
    qualifying = np.flatnonzero(n >= min_n)
    if qualifying.size == 0:
        qualifying = np.arange(k)
        if k > 1:
            notes.append(f"no slice has n >= min_n={min_n}: worst/best/gap use all slices and are anecdotal")
    elif qualifying.size == 1 and k > 1:
        notes.append(f"only one slice has n >= min_n={min_n}: no gap between adequately sized slices")
    worst = int(qualifying[np.argmin(means[qualifying])])
    best = int(qualifying[np.argmax(means[qualifying])])
    observed = float(_gap_stat(sums.sum(axis=1)[None], n[None], min_n)[0])

    if k < 2:
        kind, p_value = "none", 1.0
        notes.append(f"only one slice ({names[0]!r}): nothing to compare, gap 0 and p = 1")
    else:
        constant = np.unique(cluster_codes * k + codes).size == n_clusters
        kind = "whole-cluster" if constant else "within-cluster"
        if not clustered:
            kind = "item"
        if n_perm:
            perm = _perm_whole_cluster if constant else _perm_within_cluster
            stats = perm(
                np.random.default_rng(perm_seq), outcome, codes, cluster_codes, k, n_clusters, n_perm, min_n
            )
            p_value = float((1 + np.sum(stats >= observed - TIE_TOL)) / (1 + n_perm))
        else:
            p_value = None
            notes.append("n_perm=0: no permutation test")

    return FieldReport(
        field=name,
        slices=slices,
        worst=names[worst],
        best=names[best],
        max_gap=observed,
        p_value=p_value,
        permutation=kind,
        note="; ".join(notes) or None,
    )


def slice_metrics(
    outcome: np.ndarray,
    frame: pd.DataFrame,
    fields: Sequence[Field],
    clusters: np.ndarray | None = None,
    min_n: int = 30,
    n_boot: int = 1000,
    n_perm: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    metric: str = "top1",
    outcome_range: tuple[float, float] = (0.0, 1.0),
) -> SliceReport:
    """Per-slice mean outcome with cluster-bootstrap CIs, worst/best slice and a permutation test of the gap.

    `outcome` holds one value per row of `frame`, in [0, 1] (a rate) unless `outcome_range` names a
    bounded score's range (CIDEr-D per caption lies in [0, 10], CLIPScore in [0, 2.5]). Each field is a
    column name or a tuple of column names (an intersection named ``"a×b"`` with slice values ``"x×y"``);
    missing values form a slice ``"missing"``. Slices with fewer than `min_n` items get a warning and are
    left out of worst/best/gap (unless no slice has `min_n` items).

    Bootstrap: clusters (not items) are resampled with replacement, `n_boot` times; a replicate's slice mean
    is its weighted outcome sum over its weighted item count, and replicates in which a slice has no item are
    dropped for that slice (`SliceStat.n_boot_used`). The CI is the percentile interval at `level`.

    Permutation test of `max_gap` (best minus worst mean over slices with n >= min_n), respecting clusters:

    * field constant within every cluster (e.g. ``category`` vs ``concept``): the field's values are
      permuted across whole clusters (``permutation="whole-cluster"``; ``"item"`` when `clusters` is None,
      i.e. a plain permutation of items);
    * otherwise (e.g. ``skin_tone`` or ``vendor``, whose values vary inside a concept): the values are
      shuffled among the items *within* each cluster (``"within-cluster"``), a stratified test that
      compares, say, the skin tones of the same emoji and so is not fooled by some concepts being easier.

    p = (1 + #{permuted gap >= observed gap}) / (1 + n_perm). `seed` makes everything reproducible; each
    field gets its own stream derived from (seed, field name), so results do not depend on field order.
    """
    y = _check_outcome(outcome, frame, outcome_range)
    _check_params(min_n, n_boot, n_perm, level, seed)
    cluster_codes, n_clusters = _cluster_codes(clusters, len(frame))
    columns = [_field_columns(f, frame) for f in fields]
    reports = []
    for cols in columns:
        codes, names = _slice_codes(frame, cols)
        reports.append(
            _field_report(
                JOIN.join(cols),
                codes,
                names,
                y,
                cluster_codes,
                n_clusters,
                clusters is not None,
                int(min_n),
                int(n_boot),
                int(n_perm),
                float(level),
                int(seed),
            )
        )
    return SliceReport(
        metric=metric,
        level=float(level),
        n_boot=int(n_boot),
        n_perm=int(n_perm),
        min_n=int(min_n),
        fields=reports,
    )
