"""Window-hash records spilled to disk while hashing, read back keeping only the hashes shared enough.

The repeated-patch finder hashes thousands of windows per image (24 bytes a record: hash, slot, place)
but only a hash whose prefix is in at least 3 records can ever be flagged (`patches._flagged_windows`).
Holding every record is O(images x windows) memory (9 GiB at 30k images), so `HashSpill` appends the
records to `PARTITIONS` temporary files by the hash's top bits and `shared` reads one file at a time,
keeping the records whose prefix (the hash's top 64 - `bits` bits, as `_flagged_windows` packs it) is
in at least `min_count` records: records with one prefix share their top bits, hence their file.
Memory is then one partition and the kept records; the files are removed by `close` (also on error,
and when the spill is garbage-collected).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

PARTITIONS = 256  # files, by the hash's top 8 bits (a prefix keeps >= 8 bits below 2^56 images)
TOP_SHIFT = np.uint64(64 - 8)
BUFFER_BYTES = 32 * 2**20  # records held in memory before they are appended to their files
RECORD = np.dtype([("hash", "<u8"), ("slot", "<i8"), ("y", "<i4"), ("x", "<i4")])


class HashSpill:
    """Append-only (hash, slot, place) records on disk, partitioned by the hash's top bits.

    `directory`: where the temporary folder goes (default: the system's temporary directory).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="vlmops-patches-", dir=directory)
        self.path = Path(self._dir.name)
        self._buffers: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
        self._buffered = 0
        self.records = 0

    def append(self, hashes: np.ndarray, slots: np.ndarray, places: np.ndarray) -> None:
        """Add records: uint64 hashes, int64 slots, (k, 2) int32 (y, x) places."""
        if len(hashes) == 0:
            return
        rec = np.empty(len(hashes), RECORD)
        rec["hash"], rec["slot"], rec["y"], rec["x"] = hashes, slots, places[:, 0], places[:, 1]
        part = (hashes >> TOP_SHIFT).astype(np.intp)
        order = np.argsort(part, kind="stable")
        rec, bounds = rec[order], np.searchsorted(part[order], np.arange(PARTITIONS + 1))
        for p in np.flatnonzero(np.diff(bounds)):
            self._buffers[p].append(rec[bounds[p] : bounds[p + 1]].tobytes())
        self._buffered += rec.nbytes
        self.records += len(rec)
        if self._buffered >= BUFFER_BYTES:
            self._write()

    def _write(self) -> None:
        for p, chunks in enumerate(self._buffers):
            if chunks:
                with open(self.path / f"{p:03d}.bin", "ab") as handle:
                    handle.writelines(chunks)
                chunks.clear()
        self._buffered = 0

    def shared(self, bits: int, min_count: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hashes, slots, places) of the records whose hash prefix (hash >> `bits`) is in at least
        `min_count` records, sorted by (slot, hash); the files are removed as they are read."""
        self._write()
        kept = []
        for p in range(PARTITIONS):
            file = self.path / f"{p:03d}.bin"
            if not file.exists():
                continue
            rec = np.fromfile(file, RECORD)
            file.unlink()
            prefix = rec["hash"] >> np.uint64(bits)
            _, inverse, counts = np.unique(prefix, return_inverse=True, return_counts=True)
            kept.append(rec[counts[inverse] >= min_count])
            del rec, prefix, inverse
        rec = np.concatenate(kept) if kept else np.empty(0, RECORD)
        rec = rec[np.lexsort((rec["hash"], rec["slot"]))]
        places = np.stack([rec["y"], rec["x"]], axis=1)
        return rec["hash"].copy(), rec["slot"].copy(), places

    def close(self) -> None:
        """Remove the files (idempotent)."""
        self._buffers = [[] for _ in range(PARTITIONS)]
        self._dir.cleanup()

    def __enter__(self) -> HashSpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
