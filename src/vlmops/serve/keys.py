"""API keys: created once and shown once, stored as sha256 of the secret, checked in constant time.

A key reads ``vlm_<key_id>_<secret>``. The id is public (it appears in the log and in `keys list`);
the secret is 32 random bytes, so a plain sha256 is as strong as a slow password hash would be.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass

import sqlalchemy as sa

from vlmops.errors import VlmopsError
from vlmops.store.log import api_keys, make_engine, metadata

PREFIX = "vlm"
_KEY_RE = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{20,}})$")
DEFAULT_RATE_PER_S = 50.0
DEFAULT_BURST = 100


class ApiKeyError(VlmopsError):
    """A key operation named a key that does not exist or got bad parameters."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key without its secret."""

    key_id: str
    name: str
    created_at: float
    revoked_at: float | None
    rate_per_s: float
    burst: int

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {**asdict(self), "active": self.active}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """API keys in the store database."""

    def __init__(self, url: str | None = None) -> None:
        self.engine = make_engine(url)
        metadata.create_all(self.engine, tables=[api_keys])

    def create(self, name: str, rate_per_s: float = DEFAULT_RATE_PER_S, burst: int = DEFAULT_BURST) -> str:
        """Store a new key and return it in full (the only time the secret is visible)."""
        if not name.strip():
            raise ApiKeyError("a key needs a name (--name), e.g. the client or team that uses it")
        if rate_per_s <= 0 or burst < 1:
            raise ApiKeyError(f"rate must be > 0 and burst >= 1, got rate={rate_per_s}, burst={burst}")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    name=name.strip(),
                    secret_sha256=_digest(secret),
                    created_at=time.time(),
                    rate_per_s=float(rate_per_s),
                    burst=int(burst),
                )
            )
        return f"{PREFIX}_{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        """All keys, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at))
            return [_to_key(r) for r in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked (kept for the audit trail); returns it."""
        with self.engine.begin() as conn:
            done = conn.execute(
                api_keys.update()
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).first()
        if row is None:
            raise ApiKeyError(f"no API key with id {key_id!r}; see `vlmops keys list`")
        if done.rowcount == 0 and row.revoked_at is None:  # pragma: no cover - concurrent revoke
            raise ApiKeyError(f"could not revoke {key_id!r}; try again")
        return _to_key(row)

    def verify(self, token: str) -> ApiKey | None:
        """The active key that `token` proves, or None (unknown id, wrong secret, revoked, malformed)."""
        match = _KEY_RE.match(token or "")
        if match is None:
            return None
        key_id, secret = match.groups()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).first()
        if row is None or not hmac.compare_digest(row.secret_sha256, _digest(secret)):
            return None
        key = _to_key(row)
        return key if key.active else None


def _to_key(row: sa.Row) -> ApiKey:
    return ApiKey(row.key_id, row.name, row.created_at, row.revoked_at, row.rate_per_s, row.burst)


class CachedVerifier:
    """`KeyStore.verify` with a short memory, so a busy server does not query the database per request.

    A revocation takes effect within `ttl_s` seconds in every server process.
    """

    def __init__(self, store: KeyStore, ttl_s: float = 2.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._seen: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, token: str) -> ApiKey | None:
        now = time.monotonic()
        with self._lock:
            hit = self._seen.get(token)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        key = self.store.verify(token)
        with self._lock:
            if len(self._seen) > 10_000:  # unknown tokens must not grow memory without bound
                self._seen.clear()
            self._seen[token] = (now, key)
        return key
