"""Progress bars live in a base module: the library uses them, the CLI only configures them."""

import io

from rich.console import Console

from vlmops import progress


def test_bars_draw_on_the_configured_console_and_can_be_turned_off():
    buffer = io.StringIO()
    previous = progress._state.copy()
    try:
        progress.configure(console=Console(file=buffer, force_terminal=False, width=80))
        with progress.progress_bar(True) as bar:
            bar.add_task("counting", total=2)
        assert "counting" in buffer.getvalue()
        progress.configure(enabled=False)
        with progress.progress_bar(True) as bar:
            bar.add_task("silent", total=2)
        assert "silent" not in buffer.getvalue()
    finally:
        progress._state.update(previous)


def test_the_cli_points_library_bars_at_its_stderr_console():
    from vlmops.cli import _common

    assert progress._console() is _common.console
