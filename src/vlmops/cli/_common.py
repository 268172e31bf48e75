"""What every CLI command shares: one console, JSON output, error handling and progress bars."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vlmops.errors import VlmopsError

console = Console(stderr=True)

EXIT_OK, EXIT_FAILED_CHECK, EXIT_USAGE = 0, 1, 2

JsonOption = typer.Option(None, "--json", help="Write machine-readable results to this file ('-' = stdout).")


def handle_errors(func: Callable) -> Callable:
    """Turn VlmopsError into one red line and exit code 2, as DESIGN.md says."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except VlmopsError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)  # one line
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


def write_json(payload: Any, target: Path | None) -> None:
    """Write `payload` as JSON to a file, or to stdout when target is '-'."""
    if target is None:
        return
    text = json.dumps(payload, indent=2, default=str)
    if str(target) == "-":
        sys.stdout.write(text + "\n")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar on stderr; disabled (no output) when `enabled` is False."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
