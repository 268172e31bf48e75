"""Data-set version hashes: Merkle roots over sorted record hashes."""

from __future__ import annotations

import hashlib

import pandas as pd

from vlmops.data.version import dataset_version, merkle_root, record_hash


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_merkle_root_closed_forms():
    a, b, c = sorted([_h("a"), _h("b"), _h("c")])
    assert merkle_root([a]) == a
    assert merkle_root([b, a]) == _h(a + b)
    assert merkle_root([c, a, b]) == _h(_h(a + b) + c)
    assert merkle_root([]) == hashlib.sha256(b"").hexdigest()


def test_dataset_version_ignores_order_and_sees_every_change():
    frame = pd.DataFrame({"id": ["1", "2", "3"], "sha256": ["x", "y", "z"], "label": ["a", "b", "c"]})
    base = dataset_version(frame)
    assert dataset_version(frame.iloc[::-1]) == base
    assert dataset_version(frame.assign(label=["a", "b", "d"])) != base
    assert dataset_version(frame.assign(sha256=["x", "y", "w"])) != base
    assert dataset_version(frame.iloc[:2]) != base
    assert record_hash("1", "x", None) == record_hash("1", "x", "")
