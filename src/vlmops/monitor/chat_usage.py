"""Latency, time to first token, tokens and cost of chat exchanges, overall and per API key."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

NO_KEY = "(no key)"


def _pct(values: pd.Series, q: float) -> float | None:
    clean = values.dropna()
    return float(np.percentile(clean, q)) if len(clean) else None


def _sum(values: pd.Series) -> float | None:
    clean = values.dropna()
    return float(clean.sum()) if len(clean) else None


def usage_summary(frame: pd.DataFrame) -> dict[str, float | None]:
    """n, latency and TTFT p50/p95 (ms), tokens in/out (total and mean per exchange), cost (total and
    per 1,000 exchanges), and the share of cancelled and failed exchanges."""
    n = len(frame)
    tokens_out = frame["tokens_out"].dropna()
    cost = _sum(frame["cost_usd"])
    return {
        "n": float(n),
        "latency_ms_p50": _pct(frame["latency_ms"], 50),
        "latency_ms_p95": _pct(frame["latency_ms"], 95),
        "ttft_ms_p50": _pct(frame["ttft_ms"], 50),
        "ttft_ms_p95": _pct(frame["ttft_ms"], 95),
        "tokens_in": _sum(frame["tokens_in"]),
        "tokens_out": _sum(frame["tokens_out"]),
        "tokens_out_mean": float(tokens_out.mean()) if len(tokens_out) else None,
        "cost_usd": cost,
        "cost_usd_per_1000": None if cost is None or not n else cost / n * 1000,
        "cancelled_rate": float((frame["status"] == "cancelled").mean()) if n else None,
        "error_rate": float((frame["status"] == "error").mean()) if n else None,
    }


def usage_by_key(frame: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """`usage_summary` per API key id (requests made without auth under "(no key)")."""
    keys = frame["key_id"].fillna(NO_KEY)
    return {str(key): usage_summary(part) for key, part in frame.groupby(keys, sort=True)}


def finite_or_none(value: float | None) -> float | None:
    """None for None or NaN, else the float."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
