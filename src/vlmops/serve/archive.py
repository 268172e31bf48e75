"""Content-addressed copies of served images (opt-in with `vlmops serve --keep-images`).

Retraining needs the pixels a user gave feedback on, and the log stores only their sha256. Files are
written once per content (`<root>/<sha[:2]>/<sha>`, via a temporary name and a rename), before the
request is answered, so every logged input hash with feedback can be found again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class ImageArchive:
    """Image bytes by sha256 under one folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the bytes of `sha256` live (whether or not they exist)."""
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store bytes (idempotent); returns their sha256 (`sha256`: already computed by the caller)."""
        sha = sha256 or hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name(f".{sha}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return sha

    def has(self, sha256: str) -> bool:
        """Whether the bytes are archived."""
        return self.path(sha256).exists()
