"""The embedding cache on PostgreSQL: the SQLite cache's tables, API and semantics, for several machines.

Same rows as `vlmops.store.cache`: embeddings keyed by ``(model_version, content_sha256,
transform_id)`` holding the dimension and the float32 little-endian bytes (``bytea``), so vectors
round-trip bit for bit; generations keyed by ``(model_version, key)``. Writes are ``INSERT ... ON
CONFLICT DO NOTHING`` in one transaction per call, so concurrent writers of the same key (processes on
any machine) never fail and the first value written wins. The dimension check of a model version and
the insert run under a transaction-scoped advisory lock on that version, so two writers cannot store
vectors of different sizes for one model at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from vlmops.errors import StoreError
from vlmops.store.vectors import as_stored, from_stored

SCHEMA_VERSION = "1"
CHUNK = 5000  # keys per SELECT ... IN (postgres allows 65535 bound parameters)
T = TypeVar("T")

metadata = sa.MetaData()
embeddings = sa.Table(
    "embeddings",
    metadata,
    sa.Column("model_version", sa.Text, primary_key=True),
    sa.Column("content_sha256", sa.Text, primary_key=True),
    sa.Column("transform_id", sa.Text, primary_key=True),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
generations = sa.Table(
    "generations",
    metadata,
    sa.Column("model_version", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
cache_meta = sa.Table(
    "cache_meta",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


class PostgresEmbeddingCache:
    """Embedding vectors and generations in PostgreSQL; the API of `EmbeddingCache`."""

    def __init__(self, url: str) -> None:
        from vlmops.store.log import make_engine

        self.url = url
        self.engine = make_engine(url)
        try:
            self._setup()
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open the embedding store at {self._where}: {exc.orig or exc}") from exc
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _setup(self) -> None:
        from vlmops.store.log import create_tables

        create_tables(self.engine, list(metadata.tables.values()))
        with self.engine.begin() as conn:
            conn.execute(
                insert(cache_meta).values(key="schema_version", value=SCHEMA_VERSION).on_conflict_do_nothing()
            )
            found = conn.execute(sa.select(cache_meta.c.value).where(cache_meta.c.key == "schema_version"))
            found = found.scalar()
        if found != SCHEMA_VERSION:
            raise StoreError(
                f"{self._where} has cache schema {found}, this vlmops expects {SCHEMA_VERSION}; "
                "use a new database"
            )

    def _run(self, action: Callable[[], T]) -> T:
        """Run `action`; database errors become StoreError naming the store."""
        try:
            return action()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"embedding store {self._where} is unavailable: {exc.orig or exc}") from exc

    def get_many(self, model_version: str, transform_id: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of `keys` (content sha256s) that are present."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        t = embeddings.c
        with self.engine.connect() as conn:
            for start in range(0, len(unique), CHUNK):
                query = sa.select(t.content_sha256, t.dim, t.vector).where(
                    t.model_version == model_version,
                    t.transform_id == transform_id,
                    t.content_sha256.in_(unique[start : start + CHUNK]),
                )
                for key, dim, blob in self._run(lambda q=query: conn.execute(q).all()):
                    found[key] = from_stored(key, dim, blob, f"in {self._where}; delete it and re-embed")
        return found

    def put_many(self, model_version: str, transform_id: str, items: Mapping[str, np.ndarray]) -> None:
        """Store vectors by content sha256 in one transaction; keys already present are left as they are."""
        if not items:
            return
        dim, blobs = as_stored(model_version, items)
        now = time.time()
        rows = [
            {"model_version": model_version, "content_sha256": key, "transform_id": transform_id,
             "dim": dim, "vector": blob, "created_at": now}
            for key, blob in blobs.items()
        ]  # fmt: skip

        def write() -> None:
            with self.engine.begin() as conn:
                lock = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:v, 0))")
                conn.execute(lock, {"v": model_version})
                stored = conn.execute(
                    sa.select(embeddings.c.dim).where(embeddings.c.model_version == model_version).limit(1)
                ).scalar()
                if stored is not None and stored != dim:
                    raise StoreError(
                        f"store {self._where} has {stored}-d vectors for model {model_version} but got "
                        f"{dim}-d: use a new store (--store) or delete them with "
                        f"open_cache(url).delete_model({model_version!r})"
                    )
                conn.execute(insert(embeddings).on_conflict_do_nothing(), rows)

        self._run(write)

    def get_generations(self, model_version: str, keys: Sequence[str]) -> dict[str, str]:
        """Cached answers (JSON text) for those of `keys` that are present."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, str] = {}
        t = generations.c
        with self.engine.connect() as conn:
            for start in range(0, len(unique), CHUNK):
                query = sa.select(t.key, t.answer).where(
                    t.model_version == model_version, t.key.in_(unique[start : start + CHUNK])
                )
                found.update(self._run(lambda q=query: conn.execute(q).all()))
        return found

    def put_generations(self, model_version: str, items: Mapping[str, str]) -> None:
        """Store answers (JSON text) by key in one transaction; keys already present are left as they are."""
        if not items:
            return
        now = time.time()
        rows = [
            {"model_version": model_version, "key": key, "answer": answer, "created_at": now}
            for key, answer in items.items()
        ]

        def write() -> None:
            with self.engine.begin() as conn:
                conn.execute(insert(generations).on_conflict_do_nothing(), rows)

        self._run(write)

    def count(self, model_version: str | None = None) -> int:
        """Number of stored vectors, for one model version or in total."""
        query = sa.select(sa.func.count()).select_from(embeddings)
        if model_version is not None:
            query = query.where(embeddings.c.model_version == model_version)

        def read() -> int:
            with self.engine.connect() as conn:
                return int(conn.execute(query).scalar())

        return self._run(read)

    def delete_model(self, model_version: str) -> int:
        """Delete every vector of one model version; returns how many were removed."""

        def delete() -> int:
            with self.engine.begin() as conn:
                done = conn.execute(embeddings.delete().where(embeddings.c.model_version == model_version))
                return int(done.rowcount)

        return self._run(delete)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> PostgresEmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresEmbeddingCache({self._where!r})"
