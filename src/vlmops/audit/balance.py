"""Representation balance: group sizes per attribute and label tier, their skew, and thin intersections.

Per field (an attribute column, or a label tier such as ``label.category``): counts per value, the
imbalance ratio max/min and the normalised entropy H / log k (1 = uniform, 0 = one value). Per pair of
attribute fields: intersections with 0 < n < min_n whose two groups are each large enough on their own
(so the thinness is the pair's, not inherited), and informative absent combinations: value x of field
A never occurs with value y of field B although y occurs with at least half of A's other values and x
with at least half of B's other values (so the gap is not structural, like skin tones on flags).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from vlmops.audit.findings import CheckResult, Finding, Severity
from vlmops.errors import DataError

MAX_COUNTS_SHOWN = 100


def distribution_stats(counts: Sequence[int] | pd.Series) -> dict:
    """n values, min/max count, imbalance ratio (max/min) and normalised entropy H / log k of counts."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    if c.size == 0:
        return {"n_values": 0, "min": 0, "max": 0, "imbalance_ratio": None, "normalised_entropy": None}
    p = c / c.sum()
    entropy = float(-(p * np.log(p)).sum())
    return {
        "n_values": int(c.size),
        "min": int(c.min()),
        "max": int(c.max()),
        "imbalance_ratio": float(c.max() / c.min()),
        "normalised_entropy": entropy / math.log(c.size) if c.size > 1 else None,
    }


def _columns(frame: pd.DataFrame, fields: Sequence[str], tiers: Sequence[str]) -> pd.DataFrame:
    """One str column (None where missing) per attribute field and per label tier (label.<tier>)."""
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise DataError(
            f"balance fields {missing} are not manifest columns; choose from {list(frame.columns)}"
        )
    out = pd.DataFrame(index=frame.index)
    for name in fields:
        out[name] = frame[name].map(lambda v: None if v is None or v != v else str(v)).astype(object)
    parts = frame["label"].map(lambda v: str(v).split("/") if isinstance(v, str) and v else [])
    for depth, tier in enumerate(tiers, start=1):
        out[f"label.{tier}"] = parts.map(lambda p, d=depth: "/".join(p[:d]) if len(p) >= d else None)
    return out


def _group_finding(
    kind: str, severity: Severity, groups: dict[str, str], n: int, message: str, **extra
) -> Finding:
    record = "&".join(f"{k}={v}" for k, v in groups.items())
    return Finding(
        record_id=f"group:{record}",
        check="balance",
        kind=kind,
        severity=severity,
        message=message,
        evidence={"fields": dict(groups), "n": n, **extra},
    )


def _intersections(table: pd.DataFrame, a: str, b: str, min_n: int) -> tuple[list, list]:
    """(thin cells, informative absent cells) of fields a x b, each (a, b, x, y, n, expected)."""
    cross = pd.crosstab(table[a], table[b])
    counts = cross.to_numpy()
    rows, cols = counts.sum(axis=1), counts.sum(axis=0)
    present = counts > 0
    row_cover = present.sum(axis=1) / max(len(cols) - 1, 1)  # for an absent cell: share of b's other values
    col_cover = present.sum(axis=0) / max(len(rows) - 1, 1)
    thin, absent = [], []
    for i, j in itertools.product(range(len(rows)), range(len(cols))):
        if rows[i] < min_n or cols[j] < min_n:
            continue
        cell = (
            a,
            b,
            cross.index[i],
            cross.columns[j],
            int(counts[i, j]),
            float(rows[i] * cols[j] / counts.sum()),
        )
        if 0 < counts[i, j] < min_n:
            thin.append(cell)
        elif counts[i, j] == 0 and row_cover[i] >= 0.5 and col_cover[j] >= 0.5:
            absent.append(cell)
    return thin, absent


def _field_findings(result: CheckResult, name: str, column: pd.Series, min_n: int, max_listed: int) -> int:
    """Record a field's stats in result.details, add findings for its small groups; returns their count."""
    counts = column.value_counts(dropna=True)
    stats = distribution_stats(counts) | {"n": int(counts.sum()), "missing": int(column.isna().sum())}
    if len(counts) <= MAX_COUNTS_SHOWN:
        stats["counts"] = {str(k): int(v) for k, v in counts.items()}
    result.details["fields"][name] = stats
    small = counts[counts < min_n].sort_values(kind="stable")
    for value, n in small.head(max_listed).items():
        message = f"{name}={value} has {n} records (< {min_n})"
        share = float(n / counts.sum())
        result.findings.append(
            _group_finding("under_represented", "warning", {name: value}, int(n), message, share=share)
        )
    if len(small) > max_listed:
        result.notes.append(f"{name}: {len(small) - max_listed} more groups under {min_n} not listed")
    return len(small)


def _pair_findings(
    result: CheckResult, table: pd.DataFrame, fields: Sequence[str], min_n: int, max_listed: int
) -> int:
    """Add thin-intersection and absent-combination findings for every pair of fields; returns #thin."""
    thin, absent = [], []
    for a, b in itertools.combinations(fields, 2):
        t, z = _intersections(table, a, b, min_n)
        thin, absent = thin + t, absent + z
    thin.sort(key=lambda c: (c[4], -c[5]))
    absent.sort(key=lambda c: -c[5])
    for a, b, x, y, n, expected in thin[:max_listed]:
        message = f"{a}={x} with {b}={y}: {n} records (< {min_n}; {expected:.0f} expected if independent)"
        result.findings.append(
            _group_finding("thin_intersection", "info", {a: x, b: y}, n, message, expected=expected)
        )
    for a, b, x, y, n, expected in absent[:max_listed]:
        message = f"no record has {a}={x} with {b}={y} ({expected:.0f} expected if independent)"
        result.findings.append(
            _group_finding("absent_combination", "info", {a: x, b: y}, n, message, expected=expected)
        )
    for what, cells in (("thin intersections", thin), ("absent combinations", absent)):
        if len(cells) > max_listed:
            result.notes.append(f"{len(cells) - max_listed} more {what} not listed")
    result.details |= {"thin_intersections": len(thin), "absent_combinations": len(absent)}
    return len(thin)


def balance_check(
    frame: pd.DataFrame,
    fields: Sequence[str],
    label_tier_names: Sequence[str] = (),
    min_n: int = 30,
    max_listed: int = 50,
) -> CheckResult:
    """Group counts, imbalance and entropy per field and label tier (label.<tier>); thin field pairs."""
    table = _columns(frame, list(fields), list(label_tier_names))
    result = CheckResult(check="balance", details={"min_n": min_n, "fields": {}})
    small = sum(_field_findings(result, name, table[name], min_n, max_listed) for name in table.columns)
    thin = _pair_findings(result, table, list(fields), min_n, max_listed)
    stats = list(result.details["fields"].values())
    ratios = [s["imbalance_ratio"] for s in stats if s["imbalance_ratio"] is not None]
    entropies = [s["normalised_entropy"] for s in stats if s["normalised_entropy"] is not None]
    result.metrics = {
        "min_group_n": min((s["min"] for s in stats if s["n_values"]), default=None),
        "max_imbalance_ratio": max(ratios, default=None),
        "min_normalised_entropy": min(entropies, default=None),
        "under_represented_groups": small + thin,
    }
    return result
