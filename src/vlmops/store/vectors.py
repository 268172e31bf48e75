"""How both embedding caches (SQLite and Postgres) turn vectors into stored rows and back.

A vector is stored as its dimension and its float32 little-endian bytes, so it round-trips bit for bit.
Kept apart from the two caches so that neither has to import the other.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vlmops.errors import StoreError

DTYPE = np.dtype("<f4")


def as_stored(model_version: str, items: Mapping[str, np.ndarray]) -> tuple[int, dict[str, bytes]]:
    """The common dimension of `items` and each vector's bytes; mixed sizes are refused."""
    vectors = {key: np.asarray(vec, dtype=DTYPE).reshape(-1) for key, vec in items.items()}
    dims = {vec.shape[0] for vec in vectors.values()}
    if len(dims) != 1:
        raise StoreError(f"vectors for model {model_version} have mixed sizes {sorted(dims)}")
    return dims.pop(), {key: vec.tobytes() for key, vec in vectors.items()}


def from_stored(key: str, dim: int, blob: bytes, corrupt_hint: str) -> np.ndarray:
    """A stored row's vector as float32; a blob of the wrong length is named with `corrupt_hint`."""
    if len(blob) != dim * DTYPE.itemsize:
        raise StoreError(f"corrupt vector for {key} {corrupt_hint}")
    return np.frombuffer(bytes(blob), dtype=DTYPE).astype(np.float32)
