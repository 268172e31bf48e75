"""`vlmops models`: which models vlmops can load."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from vlmops.cli._common import JsonOption, handle_errors, results_console, write_json

app = typer.Typer(help="List and inspect models.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_(json_out: Path | None = JsonOption) -> None:
    """List built-in models and the URI schemes that load others."""
    from vlmops.models import list_models

    rows = list_models()
    table = Table("uri", "description", "licence")
    for row in rows:
        table.add_row(row["uri"], row["description"], row["licence"])
    results_console.print(table)
    write_json(rows, json_out)


@app.command("info")
@handle_errors
def info(
    uri: str = typer.Argument(..., help="Model URI, e.g. builtin:emoji-lit."),
    json_out: Path | None = JsonOption,
) -> None:
    """Load a model and print its identity (version, weights hash, dimensions, licence) and what it can
    do: embed (dual encoder), generate (captions, answers), logprobs, gradients (white-box attacks)."""
    from vlmops.models import capabilities, load_model

    model = load_model(uri)
    payload = {**model.info.to_dict(), "capabilities": capabilities(model)}
    for field in ("logit_scale", "transform_id"):  # dual encoders only
        if hasattr(model, field):
            payload[field] = getattr(model, field)
    table = Table("field", "value")
    for key, value in payload.items():
        if key == "capabilities":
            value = ", ".join(f"{name}: {_yes_no(able)}" for name, able in value.items())
        table.add_row(key, str(value))
    results_console.print(table)
    write_json(payload, json_out)


def _yes_no(able: bool | None) -> str:
    return {True: "yes", False: "no", None: "depends on the server"}[able]
