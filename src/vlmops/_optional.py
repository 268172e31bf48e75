"""Lazy import of optional dependencies with an install hint that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from vlmops.errors import MissingDependencyError


def require(module: str, extra: str) -> ModuleType:
    """Import `module` or raise a MissingDependencyError telling which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with: pip install 'vlmops[{extra}]'"
        ) from exc
