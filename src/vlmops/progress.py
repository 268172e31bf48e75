"""Progress bars for long library loops; the CLI decides where they go and whether they show.

Library code calls `progress_bar(enabled)` and never imports the CLI. By default bars are drawn on
stderr; the CLI calls `configure(console=...)` once so that bars share its stderr console, and a
caller may turn every bar off with `configure(enabled=False)`.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_state: dict = {"console": None, "enabled": True}


def configure(console: Console | None = None, enabled: bool | None = None) -> None:
    """Set the console bars draw on (None keeps the current one) and whether any bar shows."""
    if console is not None:
        _state["console"] = console
    if enabled is not None:
        _state["enabled"] = enabled


def _console() -> Console:
    if _state["console"] is None:
        _state["console"] = Console(stderr=True)
    return _state["console"]


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar on the configured console (stderr); no output when `enabled` is False."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_console(),
        disable=not (enabled and _state["enabled"]),
        transient=False,
    )
