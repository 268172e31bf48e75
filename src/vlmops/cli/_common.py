"""What every CLI command shares: two consoles, JSON output, error handling and progress bars.

Results (tables, summaries, verdicts) go to `results_console`, on stdout, so that
`vlmops data info > counts.txt` and pipes get them; progress bars, announcements, warnings and errors
go to `console`, on stderr. When the results' stream is not a terminal (a pipe, a file, a test runner)
they are not cut at 80 columns: rows are written at their full width, with no ellipsis. While
`--json -` owns stdout, results move to stderr so that stdout stays one JSON document. Logs keep the
terminal's width (80 off a terminal), so rules and bars stay a sensible length.
"""

from __future__ import annotations

import contextvars
import functools
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import typer
from rich.console import Console, ConsoleDimensions

from vlmops import progress
from vlmops.errors import VlmopsError

UNLIMITED_WIDTH = 100_000  # wider than any row: nothing is wrapped or truncated off a terminal
_json_on_stdout: contextvars.ContextVar[bool] = contextvars.ContextVar("json_on_stdout", default=False)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _CliConsole(Console):
    """A rich Console that follows the current sys streams; for results, unlimited width off a terminal."""

    def __init__(self, results: bool = False, **kwargs: Any) -> None:
        self._results = results  # read by `file`, which Console.__init__ already uses
        super().__init__(stderr=not results, **kwargs)

    @property
    def file(self) -> IO[str]:
        """stdout for results (stderr while `--json -` writes to stdout); stderr for everything else."""
        if self._file is not None:
            return self._file
        stream = sys.stdout if self._results and not _json_on_stdout.get() else sys.stderr
        return getattr(stream, "rich_proxied_file", stream)

    @file.setter
    def file(self, new_file: IO[str]) -> None:
        self._file = new_file

    @property
    def size(self) -> ConsoleDimensions:
        """The terminal's size; for results on a pipe or file, unlimited width (unless set explicitly)."""
        if self._results and self._width is None and not _is_tty(self.file):
            return ConsoleDimensions(UNLIMITED_WIDTH, self._height or 25)
        return super().size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = _CliConsole()  # progress, announcements, warnings, errors: stderr
results_console = _CliConsole(results=True)  # results: stdout
progress.configure(console=console)  # library progress bars share the CLI's stderr console

EXIT_OK, EXIT_FAILED_CHECK, EXIT_USAGE = 0, 1, 2

JsonOption = typer.Option(None, "--json", help="Write machine-readable results to this file ('-' = stdout).")


def handle_errors(func: Callable) -> Callable:
    """Turn VlmopsError into one red line and exit code 2, as DESIGN.md says."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        token = _json_on_stdout.set(str(kwargs.get("json_out")) == "-")
        try:
            return func(*args, **kwargs)
        except VlmopsError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)  # one line
            raise typer.Exit(EXIT_USAGE) from None
        finally:
            _json_on_stdout.reset(token)

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


def format_time(epoch_seconds: float) -> str:
    """A stored time (seconds since the epoch) as people read it: '2026-12-04 20:15:03' (UTC)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_rule_results(results: Iterable[Any]) -> None:
    """One line per --fail-on rule (a failure condition), e.g. 'fired: top1=0.42 < 0.5 (rule top1<0.5)'."""
    for result in results:
        verdict, _, detail = result.reason.partition(": ")
        style = "bold red" if result.fired else "green"
        results_console.print(f"[{style}]{verdict}[/]: {detail} (rule {result.rule})", highlight=False)


def print_skipped(skipped: dict | None) -> None:
    """One yellow line naming the rows left out by --skip-unreadable (nothing when none were)."""
    if not skipped or not skipped["n"]:
        return
    rows = ", ".join(str(r["row"]) for r in skipped["rows"][:20])
    more = f" and {skipped['n'] - 20} more" if skipped["n"] > 20 else ""
    console.print(
        f"[yellow]warning:[/] skipped {skipped['n']} unreadable image(s), rows {rows}{more}", highlight=False
    )
