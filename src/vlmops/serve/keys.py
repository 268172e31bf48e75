"""API keys: created once and shown once, stored as sha256 of the secret, checked in constant time.

A key reads ``vlm_<key_id>_<secret>``. The id is public (it appears in the log and in `keys list`);
the secret is 32 random bytes, so a plain sha256 is as strong as a slow password hash would be.

Each key holds scopes: ``predict`` (the /v1 model endpoints), ``feedback`` (POST /v1/feedback; its
labels may train a retrained model), ``admin`` (/metrics, /dashboard) and ``chat``
(/v1/chat/completions). New keys get ``predict,feedback,chat``; keys from a store older than scopes
could call everything there was then and keep ``predict,feedback,admin``.
A key may name a tenant: keys of one tenant may give feedback on each other's requests (key rotation).
A dashboard session is a random token stored as its sha256, tied to a key and an expiry time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import sqlalchemy as sa

from vlmops.errors import VlmopsError
from vlmops.store.log import add_missing_columns, api_keys, key_sessions, make_engine

PREFIX = "vlm"
_KEY_RE = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{20,}})$")
DEFAULT_RATE_PER_S = 50.0
DEFAULT_BURST = 100
SCOPES = ("predict", "feedback", "admin", "chat")
DEFAULT_SCOPES = ("predict", "feedback", "chat")
LEGACY_SCOPES = ("predict", "feedback", "admin")  # what a key could do before scopes existed
SESSION_PREFIX = "vls"
SESSION_TTL_S = 12 * 3600.0


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
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    tenant: str | None = None

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        """Whether the key holds `scope`."""
        return scope in self.scopes

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {**asdict(self), "scopes": list(self.scopes), "active": self.active}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(scopes: str | Sequence[str]) -> tuple[str, ...]:
    """Scopes from 'predict,feedback' or a list, checked and in canonical order."""
    items = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    wanted = {s.strip().lower() for s in items if s.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown or not wanted:
        raise ApiKeyError(
            f"bad scopes {unknown or list(items)}: give a comma-separated subset of {','.join(SCOPES)}"
        )
    return tuple(s for s in SCOPES if s in wanted)


def migrate_keys(engine: sa.Engine) -> None:
    """Bring an older store's key table up to date in place: new columns, and scopes for old keys."""
    key_sessions.create(engine, checkfirst=True)
    add_missing_columns(engine, api_keys)
    with engine.begin() as conn:
        conn.execute(
            api_keys.update().where(api_keys.c.scopes.is_(None)).values(scopes=",".join(LEGACY_SCOPES))
        )


class KeyStore:
    """API keys (and dashboard sessions) in the store database."""

    def __init__(self, url: str | None = None, engine: sa.Engine | None = None) -> None:
        self.engine = engine if engine is not None else make_engine(url)
        api_keys.create(self.engine, checkfirst=True)
        migrate_keys(self.engine)

    def create(
        self,
        name: str,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        burst: int = DEFAULT_BURST,
        scopes: str | Sequence[str] = DEFAULT_SCOPES,
        tenant: str | None = None,
    ) -> str:
        """Store a new key and return it in full (the only time the secret is visible)."""
        if not name.strip():
            raise ApiKeyError("a key needs a name (--name), e.g. the client or team that uses it")
        if rate_per_s <= 0 or burst < 1:
            raise ApiKeyError(f"rate must be > 0 and burst >= 1, got rate={rate_per_s}, burst={burst}")
        if tenant is not None and not tenant.strip():
            raise ApiKeyError("--tenant is blank: name the tenant or leave the option out")
        granted = parse_scopes(scopes)
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
                    scopes=",".join(granted),
                    tenant=None if tenant is None else tenant.strip(),
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

    def labellers(self) -> set[str]:
        """Ids of the active keys that hold the feedback scope (whose labels may train a model)."""
        return {k.key_id for k in self.list() if k.active and k.allows("feedback")}

    def open_session(self, key: ApiKey, ttl_s: float = SESSION_TTL_S) -> str:
        """A new session token for `key` (a browser keeps it in an HttpOnly cookie)."""
        token, now = f"{SESSION_PREFIX}_{secrets.token_urlsafe(32)}", time.time()
        with self.engine.begin() as conn:
            conn.execute(key_sessions.delete().where(key_sessions.c.expires_at < now))
            conn.execute(
                key_sessions.insert().values(
                    token_sha256=_digest(token), key_id=key.key_id, created_at=now, expires_at=now + ttl_s
                )
            )
        return token

    def verify_session(self, token: str) -> ApiKey | None:
        """The active key behind an unexpired session token, or None."""
        if not (token or "").startswith(f"{SESSION_PREFIX}_"):
            return None
        query = (
            sa.select(api_keys)
            .join(key_sessions, key_sessions.c.key_id == api_keys.c.key_id)
            .where(key_sessions.c.token_sha256 == _digest(token), key_sessions.c.expires_at > time.time())
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        key = None if row is None else _to_key(row)
        return key if key is not None and key.active else None

    def close_session(self, token: str) -> None:
        """End a session (log out)."""
        with self.engine.begin() as conn:
            conn.execute(key_sessions.delete().where(key_sessions.c.token_sha256 == _digest(token or "")))


def _to_key(row: sa.Row) -> ApiKey:
    scopes = tuple(row.scopes.split(",")) if row.scopes else LEGACY_SCOPES
    return ApiKey(
        row.key_id, row.name, row.created_at, row.revoked_at, row.rate_per_s, row.burst, scopes, row.tenant
    )


class CachedVerifier:
    """`KeyStore.verify` with a short memory, so a busy server does not query the database per request.

    A revocation takes effect within `ttl_s` seconds in every server process, and in every replica on
    other machines that shares the store (a ``postgresql://`` URL): each asks the database again once
    its memory of a key is `ttl_s` old.
    """

    def __init__(self, store: KeyStore, ttl_s: float = 2.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._seen: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, token: str) -> ApiKey | None:
        return self._cached(token, self.store.verify)

    def session(self, token: str) -> ApiKey | None:
        """The key behind a dashboard session token (ended sessions stop working within `ttl_s`)."""
        return self._cached(token, self.store.verify_session)

    def open_session(self, key: ApiKey) -> str:
        """A new dashboard session token for `key`."""
        return self.store.open_session(key)

    def close_session(self, token: str) -> None:
        """End a dashboard session at once in this process."""
        self.store.close_session(token)
        with self._lock:
            self._seen.pop(token, None)

    def _cached(self, token: str, check) -> ApiKey | None:
        now = time.monotonic()
        with self._lock:
            hit = self._seen.get(token)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        key = check(token)
        with self._lock:
            if len(self._seen) > 10_000:  # unknown tokens must not grow memory without bound
                self._seen.clear()
            self._seen[token] = (now, key)
        return key
