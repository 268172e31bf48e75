"""Content-addressed cache of model outputs in SQLite (WAL), safe for several writing processes.

(`open_cache` gives the same cache on PostgreSQL for a ``postgresql://`` URL: `vlmops.store.cache_pg`.)

Embeddings: one row per ``(model_version, content_sha256, transform_id)`` holding the vector's
dimension and its float32 little-endian bytes. Generations: one row per ``(model_version, key)``
holding a generative model's answer as JSON, where the key hashes the image, the prompt and the
decoding parameters (see `store.generate`). Writes use ``INSERT OR IGNORE`` inside ``BEGIN
IMMEDIATE`` transactions, so concurrent writers of the same key never fail and the first value
written wins.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from vlmops.config import get_settings
from vlmops.errors import StoreError
from vlmops.store.vectors import as_stored, from_stored

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 30.0
# Stay well below SQLite's bound-variable limit (999 before 3.32, 32766 after).
MAX_VARIABLES = 900

# Embeddings in a rowid table: the key's index holds only the keys, the vectors (~1.5 KB each) go into
# the table's own B-tree in insertion order. As a WITHOUT ROWID table (stores made before; SQLite
# advises it for rows under ~1/20 of a page) each vector sat in the key's B-tree, two to a page:
# writes took 2.7-3.1x and reads 2.8-3.3x as long (15,000 and 100,000 vectors of 384;
# bench/cache_layout.py). Both layouts answer the same statements, so an older store keeps working as
# it is.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    model_version  TEXT    NOT NULL,
    content_sha256 TEXT    NOT NULL,
    transform_id   TEXT    NOT NULL,
    dim            INTEGER NOT NULL,
    vector         BLOB    NOT NULL,
    created_at     REAL    NOT NULL,
    PRIMARY KEY (model_version, content_sha256, transform_id)
);
CREATE TABLE IF NOT EXISTS generations (
    model_version  TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    answer         TEXT    NOT NULL,
    created_at     REAL    NOT NULL,
    PRIMARY KEY (model_version, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
"""
# The embeddings table of stores made before the rowid layout: the same columns and key, WITHOUT ROWID
# (what the tests and bench/cache_layout.py make to check and time an older store).
WITHOUT_ROWID_EMBEDDINGS = (
    next(s for s in _SCHEMA.split(";") if "TABLE IF NOT EXISTS embeddings" in s) + " WITHOUT ROWID"
)

T = TypeVar("T")


class EmbeddingCache:
    """Embedding vectors keyed by (model version, content sha256, transform id) in one SQLite file."""

    def __init__(self, path: str | Path, timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path).expanduser()
        self.timeout = timeout
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open embedding store {self.path}: {exc}") from exc
        try:
            self._retry(self._setup)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Not executescript: it would COMMIT the surrounding transaction first.
        self._transaction(lambda: [conn.execute(stmt) for stmt in _SCHEMA.split(";") if stmt.strip()])
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            found = row[0] if row else "none"
            raise StoreError(
                f"{self.path} has store schema {found}, this vlmops expects {SCHEMA_VERSION}; "
                "use a new store path"
            )

    def _transaction(self, body: Callable[[], T]) -> T:
        """Run `body` inside BEGIN IMMEDIATE ... COMMIT, rolling back on any error."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _retry(self, action: Callable[[], T]) -> T:
        """Run `action`, retrying while the database is locked; other SQLite errors become StoreError."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() > deadline:
                    raise StoreError(f"embedding store {self.path} is unavailable: {exc}") from exc
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                raise StoreError(
                    f"{self.path} is not a usable vlmops embedding store ({exc}); use another path"
                ) from exc

    def get_many(self, model_version: str, transform_id: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of `keys` (content sha256s) that are present."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(unique), MAX_VARIABLES):
            chunk = unique[start : start + MAX_VARIABLES]
            marks = ",".join("?" * len(chunk))
            rows = self._retry(
                lambda chunk=chunk, marks=marks: self._conn.execute(
                    "SELECT content_sha256, dim, vector FROM embeddings WHERE model_version = ? "
                    f"AND transform_id = ? AND content_sha256 IN ({marks})",
                    (model_version, transform_id, *chunk),
                ).fetchall()
            )
            for key, dim, blob in rows:
                found[key] = from_stored(key, dim, blob, f"in {self.path}; delete the store and re-embed")
        return found

    def put_many(self, model_version: str, transform_id: str, items: Mapping[str, np.ndarray]) -> None:
        """Store vectors by content sha256 in one transaction; keys already present are left as they are."""
        if not items:
            return
        dim, blobs = as_stored(model_version, items)
        now = time.time()
        # In key order: the rows (~1.5 KB each) go into the primary-key B-tree page after page instead of
        # at random places; 100,000 vectors in chunks of 1,024: 2.5-3.0 -> 2.1-2.4 CPU s (issue 18).
        rows = [(model_version, key, transform_id, dim, blob, now) for key, blob in sorted(blobs.items())]
        self._retry(lambda: self._write(model_version, dim, rows))

    def _write(self, model_version: str, dim: int, rows: list[tuple]) -> None:
        conn = self._conn

        def body() -> None:
            stored = conn.execute(
                "SELECT dim FROM embeddings WHERE model_version = ? LIMIT 1", (model_version,)
            ).fetchone()
            if stored is not None and stored[0] != dim:
                raise StoreError(
                    f"store {self.path} has {stored[0]}-d vectors for model {model_version} but got {dim}-d: "
                    f"use a new store (--store) or delete them with "
                    f"EmbeddingCache({str(self.path)!r}).delete_model({model_version!r})"
                )
            conn.executemany(
                "INSERT OR IGNORE INTO embeddings (model_version, content_sha256, transform_id, "
                "dim, vector, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

        self._transaction(body)

    def get_generations(self, model_version: str, keys: Sequence[str]) -> dict[str, str]:
        """Cached answers (JSON text) for those of `keys` that are present."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, str] = {}
        for start in range(0, len(unique), MAX_VARIABLES):
            chunk = unique[start : start + MAX_VARIABLES]
            marks = ",".join("?" * len(chunk))
            rows = self._retry(
                lambda chunk=chunk, marks=marks: self._conn.execute(
                    f"SELECT key, answer FROM generations WHERE model_version = ? AND key IN ({marks})",
                    (model_version, *chunk),
                ).fetchall()
            )
            found.update(rows)
        return found

    def put_generations(self, model_version: str, items: Mapping[str, str]) -> None:
        """Store answers (JSON text) by key in one transaction; keys already present are left as they are."""
        if not items:
            return
        now = time.time()
        rows = [(model_version, key, answer, now) for key, answer in items.items()]
        statement = (
            "INSERT OR IGNORE INTO generations (model_version, key, answer, created_at) VALUES (?, ?, ?, ?)"
        )
        self._retry(lambda: self._transaction(lambda: self._conn.executemany(statement, rows)))

    def count(self, model_version: str | None = None) -> int:
        """Number of stored vectors, for one model version or in total."""
        if model_version is None:
            query, params = "SELECT COUNT(*) FROM embeddings", ()
        else:
            query, params = "SELECT COUNT(*) FROM embeddings WHERE model_version = ?", (model_version,)
        return int(self._retry(lambda: self._conn.execute(query, params).fetchone()[0]))

    def delete_model(self, model_version: str) -> int:
        """Delete every vector of one model version; returns how many were removed."""

        def delete() -> int:
            with_tx = self._conn.execute("DELETE FROM embeddings WHERE model_version = ?", (model_version,))
            return with_tx.rowcount

        return int(self._retry(delete))

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r})"


def open_cache(url: str | None = None) -> EmbeddingCache:
    """Open the store at `url` (``sqlite:///path``, a plain path or ``postgresql://...``; default from
    settings). A Postgres store is a `PostgresEmbeddingCache`, with the same methods."""
    url = url or get_settings().resolved_store_url()
    if url.startswith("sqlite:///"):
        return EmbeddingCache(url.removeprefix("sqlite:///"))
    scheme, sep, _ = url.partition("://")
    if not sep:
        return EmbeddingCache(url)
    if scheme in ("postgresql", "postgresql+psycopg"):
        from vlmops.store.cache_pg import PostgresEmbeddingCache

        return PostgresEmbeddingCache(url)  # type: ignore[return-value]  # same methods
    if scheme == "postgres" or scheme.startswith("postgresql+"):
        raise StoreError(f"store URL {url!r}: write it as postgresql://user@host:port/database")
    raise StoreError(
        f"store URL {url!r} has unknown scheme {scheme!r}; "
        "use sqlite:///path, a plain file path or postgresql://user@host:port/database"
    )
