"""The durable prediction log: one row per served request, one per feedback event, and the API keys.

SQLAlchemy Core over the store URL, so SQLite (the default, WAL mode) and ``postgresql://`` share one
schema. Rows are written in group commits: the server hands every row waiting at that moment to
`PredictionLog.write` in one transaction and answers the clients only after it returns, so an
acknowledged prediction survives a crash (kill -9) of the server process. What a power cut may take
depends on `sync` (SQLite only; Postgres follows its own ``synchronous_commit``):

- ``full``: ``synchronous=FULL``, every commit is fsync'd before it returns: nothing acknowledged is lost.
- ``group``: ``synchronous=NORMAL``, a commit returns once SQLite has written it to the WAL (the OS holds
  it, so a killed process loses nothing), and `sync` fsyncs the WAL once for every commit since the last
  fsync (`vlmops.serve.logwriter` calls it in the background): a power cut may take the last moments'
  rows, and one fsync is shared by a whole group of requests instead of paid by each.

Several server processes may write at once: Postgres serialises them behind row locks; on SQLite the
group writes (`write`, `write_chat`) first queue on a file lock (`vlmops.store.writelock`), which wakes
the next writer the moment the last one commits instead of after a busy-handler sleep, and every other
writer waits behind SQLite's busy timeout.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from vlmops.config import get_settings
from vlmops.errors import StoreError
from vlmops.store.writelock import WriterLock

BUSY_TIMEOUT_S = 30.0
SYNC_MODES = ("full", "group")
_DTYPE = np.dtype("<f4")

metadata = sa.MetaData()

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("time", sa.Float, nullable=False, index=True),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("key_id", sa.String(32)),
    sa.Column("model_version", sa.String(128), nullable=False, index=True),
    sa.Column("input_sha256", sa.Text, nullable=False),  # JSON list, one hash per image or text
    sa.Column("dim", sa.Integer),
    sa.Column("embedding", sa.LargeBinary),  # float32 little-endian, (n_inputs, dim) row-major
    sa.Column("prediction", sa.Text),  # JSON: label, top-k, set, tags, hits ... per endpoint
    sa.Column("confidence", sa.Float),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("texts", sa.Text),  # JSON list of the request's texts, PII-redacted
    sa.Column("image_stats", sa.Text),  # JSON list, one dict per image (models.image_stats.describe_image)
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("request_id", sa.String(64), sa.ForeignKey("requests.request_id"), nullable=False, index=True),
    sa.Column("key_id", sa.String(32)),
    sa.Column("accepted", sa.Boolean, nullable=False),
    sa.Column("label", sa.Text),  # the corrected label, or the accepted prediction
    sa.Column("source", sa.String(16), nullable=False),  # "human" (a person said so) or "model"
    sa.Column("rating", sa.Float),  # optional score a person gave a generated answer (e.g. 1-5 or 0/1)
)

# One row per /v1/chat/completions exchange, beside its `requests` row (endpoint "chat"), which holds the
# time, key, model version, image hashes and statistics and the latency, so that feedback, owners and
# monitoring windows work for chat exactly as for classification. The corrected answer of a feedback
# event goes in `feedback.label`.
chat_exchanges = sa.Table(
    "chat_exchanges",
    metadata,
    sa.Column("request_id", sa.String(64), sa.ForeignKey("requests.request_id"), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),  # "local" (a served model) or "upstream" (proxied)
    sa.Column("model", sa.String(256), nullable=False),  # the model name the answer came from
    sa.Column("prompt", sa.Text, nullable=False),  # JSON list of {"role", "text"}: the messages' text parts
    sa.Column("prompt_redacted", sa.Boolean, nullable=False),  # True when PII was redacted before storing
    sa.Column("answer", sa.Text, nullable=False),  # the full answer, or the partial one when cancelled
    sa.Column("finish_reason", sa.String(32)),  # "stop", "length", ... as answered; None when cancelled
    sa.Column("status", sa.String(16), nullable=False),  # "ok", "cancelled" (client left) or "error"
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("tokens_in", sa.Integer),
    sa.Column("tokens_out", sa.Integer),
    sa.Column("ttft_ms", sa.Float),  # time to first token; for a non-streamed answer, the latency
    sa.Column("cost_usd", sa.Float),
    sa.Column("params", sa.Text),  # JSON: max_tokens, temperature, top_p, seed, n, stop ...
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("rate_per_s", sa.Float, nullable=False),
    sa.Column("burst", sa.Integer, nullable=False),
    sa.Column("scopes", sa.String(64)),  # comma-separated; NULL only in a store older than scopes
    sa.Column("tenant", sa.String(128)),  # keys of one tenant may give feedback on each other's requests
)

key_sessions = sa.Table(  # browser sessions of the dashboard: a key exchanged for an HttpOnly cookie
    "key_sessions",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(32), sa.ForeignKey("api_keys.key_id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


@dataclass(frozen=True)
class RequestOwner:
    """Who made a logged request: its key id and that key's tenant (both None without auth), and the
    request's endpoint ("classify", "chat" ...), which decides what feedback on it may say."""

    key_id: str | None
    tenant: str | None
    endpoint: str | None = None


@dataclass
class ChatExchange:
    """What the server records about one chat exchange, beside its `PredictionRow` (same request id)."""

    request_id: str
    mode: str
    model: str
    prompt: Sequence[dict]
    answer: str
    status: str = "ok"
    finish_reason: str | None = "stop"
    stream: bool = False
    prompt_redacted: bool = False
    tokens_in: int | None = None
    tokens_out: int | None = None
    ttft_ms: float | None = None
    cost_usd: float | None = None
    params: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        """Column values for the chat_exchanges table."""
        row = {c.name: getattr(self, c.name) for c in chat_exchanges.c}
        row["prompt"] = json.dumps(list(self.prompt), ensure_ascii=False)
        row["params"] = json.dumps(self.params)
        return row


@dataclass
class PredictionRow:
    """What the server records about one answered request."""

    request_id: str
    endpoint: str
    model_version: str
    input_sha256: Sequence[str]
    latency_ms: float
    key_id: str | None = None
    embedding: np.ndarray | None = None
    prediction: Any = None
    confidence: float | None = None
    texts: Sequence[str] = ()
    time: float = field(default_factory=time.time)
    image_stats: Sequence[dict] = ()

    def to_row(self) -> dict:
        """Column values for the requests table."""
        emb = None if self.embedding is None else np.atleast_2d(self.embedding).astype(_DTYPE)
        return {
            "request_id": self.request_id,
            "time": self.time,
            "endpoint": self.endpoint,
            "key_id": self.key_id,
            "model_version": self.model_version,
            "input_sha256": json.dumps(list(self.input_sha256)),
            "dim": None if emb is None else int(emb.shape[1]),
            "embedding": None if emb is None else emb.tobytes(),
            "prediction": None if self.prediction is None else json.dumps(self.prediction),
            "confidence": self.confidence,
            "latency_ms": float(self.latency_ms),
            "texts": json.dumps(list(self.texts)) if self.texts else None,
            "image_stats": json.dumps(list(self.image_stats)) if self.image_stats else None,
        }


def embedding_of(row: sa.Row | dict) -> np.ndarray | None:
    """The (n_inputs, dim) float32 embeddings stored with a logged request."""
    data = row._mapping if isinstance(row, sa.Row) else row
    if data["embedding"] is None:
        return None
    return np.frombuffer(data["embedding"], dtype=_DTYPE).reshape(-1, data["dim"]).copy()


def prediction_of(row) -> dict:
    """The JSON prediction stored with a logged request ({} when none)."""
    value = row.prediction if hasattr(row, "prediction") else row.get("prediction")
    return json.loads(value) if value else {}


def sqlite_url(path: str | Path) -> str:
    """SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{Path(path).expanduser()}"


def _tune_sqlite(dbapi_conn, _record, synchronous: str = "FULL") -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute(f"PRAGMA synchronous = {synchronous}")  # FULL: a commit is on disk when it returns
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def make_engine(url: str | None = None, synchronous: str = "FULL") -> sa.Engine:
    """An engine for the store URL (default: VLMOPS_STORE_URL or the SQLite store under VLMOPS_HOME).

    `synchronous`: SQLite's setting for every connection (FULL, or NORMAL for the group-synced log).
    """
    url = url or get_settings().resolved_store_url()
    if "://" not in url:  # a plain file path, as the embedding cache accepts
        url = sqlite_url(url)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(sqlite_url(path), connect_args={"timeout": BUSY_TIMEOUT_S})
        sa.event.listen(engine, "connect", functools.partial(_tune_sqlite, synchronous=synchronous))
        return engine
    if url.startswith(("postgresql://", "postgresql+psycopg://")):
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise StoreError("a postgresql:// store needs psycopg: pip install 'vlmops[postgres]'") from exc
        return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), pool_pre_ping=True)
    raise StoreError(f"unsupported store URL {url!r}: use sqlite:///path/to/store.sqlite or postgresql://...")


def create_tables(engine: sa.Engine, tables: Sequence[sa.Table] | None = None) -> None:
    """`metadata.create_all`, safe when several processes (`vlmops serve --workers N`) start at once.

    Each checks which tables exist, then creates the missing ones; a process that checked before another
    created them gets "already exists", and checks again.
    """
    for attempt in range(5):
        try:
            metadata.create_all(engine, tables=tables)
            return
        except sa.exc.DBAPIError as exc:
            message = str(exc.orig)  # Postgres reports a concurrent CREATE TABLE as a pg_type clash
            raced = "already exists" in message or "pg_type_typname_nsp_index" in message
            if not raced or attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))


def add_missing_columns(engine: sa.Engine, table: sa.Table) -> None:
    """Add nullable columns that a newer vlmops defines to a table an older one created (keeps the rows)."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(table.name)}
    for column in [c for c in table.columns if c.name not in present]:
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        except sa.exc.SQLAlchemyError:  # another process (a second worker) added it first
            if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
                raise


class _Insert:
    """A table's INSERT of every column, compiled once for the engine's dialect.

    The log's group commits run it on the DBAPI cursor inside SQLAlchemy's transaction: SQLAlchemy's
    per-execution work (cache lookup, parameter processing, result set-up) took ~0.25 ms of each commit,
    which every answer waits for (bench/RESULTS.md, the --upstream proxy). The columns are plain
    strings, numbers, bytes and booleans, which every driver binds as they are.
    """

    def __init__(self, engine: sa.Engine, table: sa.Table) -> None:
        names = [c.name for c in table.c]
        compiled = table.insert().compile(dialect=engine.dialect, column_keys=names)
        self.sql = str(compiled)
        self.order = compiled.positiontup if compiled.positional else None  # qmark (SQLite) or named

    def parameters(self, rows: list[dict]) -> list:
        """`rows` (column -> value) in the driver's parameter style."""
        if self.order is None:
            return rows
        order = self.order
        return [tuple(row[name] for name in order) for row in rows]


class PredictionLog:
    """Append-only request and feedback log in the store database."""

    def __init__(self, url: str | None = None, sync: str = "full") -> None:
        if sync not in SYNC_MODES:
            raise StoreError(f"unknown log sync mode {sync!r}; use one of: {', '.join(SYNC_MODES)}")
        self.engine = make_engine(url, "NORMAL" if sync == "group" else "FULL")
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        # group: acknowledged rows sit in the WAL, written but not yet fsync'd, until `sync` is called
        self.wal_path = Path(f"{database}-wal") if sync == "group" and database else None
        self._writer_lock = WriterLock(database) if database and database != ":memory:" else None
        self._inserts = (_Insert(self.engine, requests), _Insert(self.engine, chat_exchanges))
        try:
            create_tables(self.engine)
            add_missing_columns(self.engine, requests)
            add_missing_columns(self.engine, api_keys)
            add_missing_columns(self.engine, feedback)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot open the prediction log at {self.engine.url}: {exc}") from exc

    def write(self, rows: Iterable[PredictionRow]) -> None:
        """Insert rows in one transaction; returns only once they are committed."""
        values = [r.to_row() for r in rows]
        if values:
            self._insert_all((self._inserts[0], values))

    def write_chat(self, pairs: Iterable[tuple[PredictionRow, ChatExchange]]) -> None:
        """Insert chat exchanges (each a requests row and its chat row) in one transaction."""
        pairs = list(pairs)
        for row, chat in pairs:
            if row.request_id != chat.request_id:
                raise StoreError(f"chat row {chat.request_id} paired with request row {row.request_id}")
        if pairs:
            rows, chats = [row.to_row() for row, _ in pairs], [chat.to_row() for _, chat in pairs]
            self._insert_all((self._inserts[0], rows), (self._inserts[1], chats))

    def _insert_all(self, *batches: tuple[_Insert, list[dict]]) -> None:
        """Run each (insert, rows) batch on the DBAPI cursor in one transaction; returns once committed."""
        with self._writing(), self.engine.begin() as conn:
            cursor = conn.connection.cursor()
            try:
                for insert, rows in batches:
                    cursor.executemany(insert.sql, insert.parameters(rows))
            finally:
                cursor.close()

    def chats(self, since: float | None = None, limit: int | None = None) -> list[sa.Row]:
        """Logged chat exchanges joined with their requests rows, in time order."""
        query = (
            sa.select(requests, *[c for c in chat_exchanges.c if c.name != "request_id"])
            .select_from(requests.join(chat_exchanges, requests.c.request_id == chat_exchanges.c.request_id))
            .order_by(requests.c.time)
        )
        if since is not None:
            query = query.where(requests.c.time >= since)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def sync(self) -> None:
        """Flush every committed row to disk (one fsync of the WAL); nothing to do in ``full`` mode."""
        if self.wal_path is None:
            return
        try:
            fd = os.open(self.wal_path, os.O_RDONLY)
        except FileNotFoundError:  # checkpointed and removed: the checkpoint fsync'd the rows already
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def has_request(self, request_id: str) -> bool:
        """Whether a request id was logged."""
        with self.engine.connect() as conn:
            query = sa.select(requests.c.request_id).where(requests.c.request_id == request_id)
            return conn.execute(query).first() is not None

    def request_owner(self, request_id: str) -> RequestOwner | None:
        """The key (and its tenant) that made a logged request, or None when no such request was logged."""
        query = (
            sa.select(requests.c.key_id, api_keys.c.tenant, requests.c.endpoint)
            .select_from(requests.outerjoin(api_keys, requests.c.key_id == api_keys.c.key_id))
            .where(requests.c.request_id == request_id)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else RequestOwner(row.key_id, row.tenant, row.endpoint)

    def add_feedback(
        self,
        request_id: str,
        accepted: bool,
        label: str | None,
        key_id: str | None,
        source: str = "human",
        rating: float | None = None,
    ) -> int:
        """Record feedback on a logged request (for chat: `label` is the corrected answer); returns its id."""
        with self.engine.begin() as conn:
            result = conn.execute(
                feedback.insert().values(
                    time=time.time(),
                    request_id=request_id,
                    key_id=key_id,
                    accepted=accepted,
                    label=label,
                    source=source,
                    rating=rating,
                )
            )
            return int(result.inserted_primary_key[0])

    def request_ids(self) -> set[str]:
        """Every logged request id."""
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(requests.c.request_id))}

    def requests(self, since: float | None = None, limit: int | None = None) -> list[sa.Row]:
        """Logged requests in time order, optionally from `since` and at most `limit`."""
        query = sa.select(requests).order_by(requests.c.time)
        if since is not None:
            query = query.where(requests.c.time >= since)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def feedback(self) -> list[sa.Row]:
        """All feedback rows in time order."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(feedback).order_by(feedback.c.id)))

    def _writing(self):
        """The writer lock of a SQLite file (a no-op context for Postgres and in-memory SQLite)."""
        return self._writer_lock.held() if self._writer_lock is not None else contextlib.nullcontext()

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()
        if self._writer_lock is not None:
            self._writer_lock.close()
