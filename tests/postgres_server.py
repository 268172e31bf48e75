"""A throwaway PostgreSQL server for tests: initdb in a temporary folder, loopback only, trust auth.

Uses the Debian server binaries that `scripts/system-deps.sh` installs. PostgreSQL refuses to run as
root, so under root (CI) the server runs as the `postgres` system user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, if any."""
    root = Path("/usr/lib/postgresql")
    versions = (
        sorted(root.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)) if root.exists() else []
    )
    return versions[-1].parent if versions else None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres() -> Iterator[str]:
    """Start a server; yields its SQLAlchemy URL; stops it and removes its files afterwards."""
    bindir = server_bin()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL server binaries are missing: run `make setup` (scripts/system-deps.sh)"
        )
    folder = Path(tempfile.mkdtemp(prefix="vlmops-pg-", dir="/tmp"))
    data = folder / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    run = lambda *cmd: subprocess.run(_as_server_user(list(cmd)), check=True, capture_output=True)  # noqa: E731
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "vlmops", "--auth=trust", "-E", "UTF8")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=on"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
        yield f"postgresql://vlmops@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                capture_output=True,
            )
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(server_url: str, name: str) -> str:
    """Create database `name` on the server at `server_url`; returns its URL (an empty store per test)."""
    import sqlalchemy as sa

    engine = sa.create_engine(server_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{server_url.rsplit('/', 1)[0]}/{name}"
