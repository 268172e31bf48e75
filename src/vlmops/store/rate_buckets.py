"""Token buckets in the PostgreSQL store, so gateway replicas on several machines share each key's rate.

`vlmops.serve.shared_limits` shares buckets between the worker processes of one machine through a
mapped file; replicas on different machines share nothing but the database. Here a bucket is a row
``(name, tokens, updated)``, and a take is one statement: ``INSERT ... ON CONFLICT DO UPDATE ...
RETURNING``. Postgres locks the row for the update, so concurrent takes from any replica are applied one
after another, each refilling the bucket for the time since the previous one and taking its tokens only
if enough are there. Time is the database server's (``clock_timestamp()``), so the replicas' clocks
need not agree. A take costs one round trip to the database (about a millisecond on a LAN).
"""

from __future__ import annotations

import sqlalchemy as sa

from vlmops.errors import StoreError

metadata = sa.MetaData()
rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),  # database clock, seconds since the epoch
    sa.Column("granted", sa.Boolean, nullable=False),  # whether the last take got its tokens
)

# The refill of an existing bucket: its tokens plus the time since its last take (never negative: a take
# that read the clock before waiting for the row lock may find a later one written) times the rate.
_REFILLED = "LEAST(:burst, b.tokens + GREATEST(0, EXCLUDED.updated - b.updated) * :rate)"
_TAKE = sa.text(
    f"""
    INSERT INTO rate_buckets AS b (name, tokens, updated, granted)
    VALUES (:name, CASE WHEN :burst >= :n THEN :burst - :n ELSE :burst END,
            EXTRACT(EPOCH FROM clock_timestamp())::float8, :burst >= :n)
    ON CONFLICT (name) DO UPDATE SET
        tokens = CASE WHEN {_REFILLED} >= :n THEN {_REFILLED} - :n ELSE {_REFILLED} END,
        granted = {_REFILLED} >= :n,
        updated = GREATEST(b.updated, EXCLUDED.updated)
    RETURNING tokens, granted
    """
)


class DatabaseTokenBuckets:
    """Named token buckets in the store database; `take` answers as `SharedTokenBuckets.take` does."""

    def __init__(self, url: str) -> None:
        from vlmops.store.log import create_tables, make_engine

        self.engine = make_engine(url)
        if self.engine.dialect.name != "postgresql":
            self.engine.dispose()
            raise StoreError(f"shared rate limits need a postgresql:// store, got {url!r}")
        try:
            create_tables(self.engine, [rate_buckets])
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot create the rate_buckets table in {url!r}: {exc}") from exc

    def take(self, name: str, rate: float, burst: float, n: float = 1.0) -> float:
        """Take `n` tokens from bucket `name`: 0.0 when granted, else the seconds until they would be."""
        params = {"name": name, "rate": float(rate), "burst": float(burst), "n": float(n)}
        try:
            with self.engine.begin() as conn:
                tokens, granted = conn.execute(_TAKE, params).one()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"the rate limits' database is unavailable: {exc.orig or exc}") from exc
        return 0.0 if granted else (n - tokens) / rate

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()
