"""`vlmops data`: fetch the embedded emoji data set and describe any data set."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from vlmops.cli._common import JsonOption, console, handle_errors, write_json
from vlmops.errors import DataError

app = typer.Typer(help="Fetch and describe data sets.", no_args_is_help=True)

INFO_COLUMNS = ("vendor", "split", "category", "skin_tone", "gender", "licence")


@app.command("fetch")
@handle_errors
def fetch(
    name: str = typer.Argument(..., help="Data set to fetch; 'emoji' is the one built in."),
    seed: int = typer.Option(0, help="Seed of the concept-level train/val/test split."),
    force: bool = typer.Option(False, "--force", help="Rebuild the manifest even if it exists."),
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Install the emoji images (npm, pinned versions), render OpenMoji and build the manifest."""
    if name != "emoji":
        raise DataError(f"unknown data set {name!r}; the only fetchable data set is 'emoji'")
    from vlmops.data.emoji import fetch_emoji, load_emoji_manifest

    path = fetch_emoji(seed=seed, force=force, progress=progress)
    frame = load_emoji_manifest()
    console.print(f"emoji data: {len(frame)} images in {path}")
    write_json({"manifest": str(path), "n": len(frame)}, json_out)


@app.command("info")
@handle_errors
def info(
    data: str = typer.Option("emoji", "--data", "-d", help="'emoji', an image folder or a manifest file."),
    json_out: Path | None = JsonOption,
) -> None:
    """Count records per vendor, split, category, skin tone, gender and licence (or any attribute)."""
    from vlmops.data.manifest import attribute_columns, resolve_data

    frame = resolve_data(data)
    columns = [c for c in INFO_COLUMNS if c in frame.columns]
    scalar = [c for c in attribute_columns(frame) if c not in columns and _is_scalar(frame[c])]
    columns += [c for c in scalar if frame[c].nunique() <= 50]
    counts = {col: frame[col].astype(str).value_counts().to_dict() for col in columns}
    console.print(f"[bold]{data}[/]: {len(frame)} records")
    for col, values in counts.items():
        table = Table(title=col, title_justify="left")
        table.add_column(col)
        table.add_column("count", justify="right")
        for value, count in values.items():
            table.add_row(value, str(count))
        console.print(table)
    write_json({"n": len(frame), "counts": counts}, json_out)


def _is_scalar(column) -> bool:
    """Whether a column holds plain values (not lists or dicts), so its values can be counted."""
    first = next((v for v in column if v is not None), None)
    return not isinstance(first, list | tuple | dict | set) and not hasattr(first, "shape")
