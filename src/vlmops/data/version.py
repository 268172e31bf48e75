"""Content version of a data set: a Merkle root over its sorted record hashes."""

from __future__ import annotations

import hashlib

import pandas as pd


def record_hash(record_id: str, content_sha256: str, label: str | None) -> str:
    """Hash of one record: its id, its content and its label."""
    return hashlib.sha256(f"{record_id}\0{content_sha256}\0{label or ''}".encode()).hexdigest()


def merkle_root(leaves: list[str]) -> str:
    """Merkle root of hex digests (sorted first, so row order does not matter); odd nodes carry up."""
    level = sorted(leaves)
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = [hashlib.sha256("".join(p).encode()).hexdigest() if len(p) == 2 else p[0] for p in pairs]
    return level[0]


def dataset_version(frame: pd.DataFrame) -> str:
    """Merkle root over the records of `frame` (needs id and sha256 columns; label optional)."""
    labels = frame["label"] if "label" in frame.columns else [None] * len(frame)
    leaves = [record_hash(i, s, lab) for i, s, lab in zip(frame["id"], frame["sha256"], labels, strict=True)]
    return merkle_root(leaves)
