"""Logged chat exchanges as a table, and the reference and current windows the monitor compares.

One row per /v1/chat/completions exchange (`PredictionLog.chats()`): when, which key, which model
version, the user's text, the answer, how it ended, its tokens, time to first token, latency, cost,
the sha256 of the first image (what the kept-image archive is keyed by) and of every image.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import sqlalchemy as sa

from vlmops.monitor.text_patterns import user_texts
from vlmops.store.log import PredictionLog, chat_exchanges, requests

COLUMNS = (
    "request_id", "time", "key_id", "model_version", "model", "mode", "status", "stream", "prompt_text",
    "system_text", "answer", "finish_reason", "tokens_in", "tokens_out", "ttft_ms", "latency_ms",
    "cost_usd", "image_sha256", "n_images", "image_sha256s",
)  # fmt: skip


def _messages(raw: str | None) -> list[dict]:
    try:
        value = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return []
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []


def _hashes(raw: str | None) -> list[str]:
    try:
        value = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return []
    return [str(h) for h in value] if isinstance(value, list) else []


def chats_frame(rows) -> pd.DataFrame:
    """Rows of `PredictionLog.chats()` as a DataFrame with `COLUMNS` (numbers as float, None as NaN)."""
    records = []
    for row in rows:
        data = row._mapping if isinstance(row, sa.Row) else row
        messages = _messages(data["prompt"])
        hashes = _hashes(data["input_sha256"])
        system = [str(m.get("text") or "") for m in messages if m.get("role") in ("system", "developer")]
        records.append(
            {
                "request_id": data["request_id"],
                "time": float(data["time"]),
                "key_id": data["key_id"],
                "model_version": data["model_version"],
                "model": data["model"],
                "mode": data["mode"],
                "status": data["status"],
                "stream": bool(data["stream"]),
                "prompt_text": "\n".join(user_texts(messages)),
                "system_text": "\n".join(system),
                "answer": data["answer"] or "",
                "finish_reason": data["finish_reason"] or data["status"],
                "tokens_in": data["tokens_in"],
                "tokens_out": data["tokens_out"],
                "ttft_ms": data["ttft_ms"],
                "latency_ms": data["latency_ms"],
                "cost_usd": data["cost_usd"],
                "image_sha256": hashes[0] if hashes else None,
                "n_images": len(hashes),
                "image_sha256s": hashes,
            }
        )
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    for column in ("tokens_in", "tokens_out", "ttft_ms", "latency_ms", "cost_usd"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(np.float64)
    return frame


def chat_versions(log: PredictionLog) -> dict[str, int]:
    """How many chat exchanges each model version has in the log."""
    query = (
        sa.select(requests.c.model_version, sa.func.count())
        .select_from(requests.join(chat_exchanges, requests.c.request_id == chat_exchanges.c.request_id))
        .group_by(requests.c.model_version)
    )
    with log.engine.connect() as conn:
        return {str(v): int(k) for v, k in conn.execute(query)}


def chat_windows(
    log: PredictionLog, model_version: str, window: int, reference_until: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, current) chat exchanges of one model version, oldest first.

    Current: the latest `window` exchanges (at or after `reference_until` when given). Reference: the
    earliest `window` exchanges logged before `reference_until` (a UNIX time), or, without it, before
    the current window: the traffic the model had when it was known to be healthy, which stays the
    same from pass to pass. Either may be shorter than `window` (or empty). Two bounded queries: a long
    log is not read whole.
    """
    base = (
        sa.select(requests, *[c for c in chat_exchanges.c if c.name != "request_id"])
        .select_from(requests.join(chat_exchanges, requests.c.request_id == chat_exchanges.c.request_id))
        .where(requests.c.model_version == model_version)
    )
    latest = base.order_by(requests.c.time.desc(), requests.c.request_id.desc()).limit(window)
    if reference_until is not None:
        latest = latest.where(requests.c.time >= reference_until)
    with log.engine.connect() as conn:
        current = chats_frame(reversed(conn.execute(latest).fetchall()))
        earliest = base.order_by(requests.c.time, requests.c.request_id).limit(window)
        if reference_until is not None:
            earliest = earliest.where(requests.c.time < reference_until)
        elif not current.empty:
            first = (float(current["time"].iloc[0]), str(current["request_id"].iloc[0]))
            earliest = earliest.where(
                sa.or_(
                    requests.c.time < first[0],
                    sa.and_(requests.c.time == first[0], requests.c.request_id < first[1]),
                )
            )
        reference = chats_frame(conn.execute(earliest).fetchall())
    return reference, current
