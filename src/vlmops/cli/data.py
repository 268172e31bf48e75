"""`vlmops data`: fetch the embedded emoji data set and describe any data set."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from vlmops.cli._common import JsonOption, console, handle_errors, results_console, write_json
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
    results_console.print(f"emoji data: {len(frame)} images in {path}", highlight=False)
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
    results_console.print(f"[bold]{data}[/]: {len(frame)} records", highlight=False)
    for col, values in counts.items():
        table = Table(title=col, title_justify="left")
        table.add_column(col)
        table.add_column("count", justify="right")
        for value, count in values.items():
            table.add_row(value, str(count))
        results_console.print(table)
    write_json({"n": len(frame), "counts": counts}, json_out)


def _is_scalar(column) -> bool:
    """Whether a column holds plain values (not lists or dicts), so its values can be counted."""
    first = next((v for v in column if v is not None), None)
    return not isinstance(first, list | tuple | dict | set) and not hasattr(first, "shape")


@app.command("card")
@handle_errors
def card(
    data: str = typer.Option("emoji", "--data", "-d", help="'emoji', an image folder or a manifest file."),
    audit_json: Path | None = typer.Option(
        None, "--audit", help="An audit JSON (`vlmops audit --json`) to take known issues from."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Markdown file to write (default: stdout)."),
    min_n: int = typer.Option(30, "--min-n", min=1, help="Groups smaller than this are under-represented."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Write a Datasheets-for-Datasets markdown card prefilled from the manifest and an audit.

    Without --audit, the quick model-free checks (provenance, balance, PII) run first; questions only
    the data's owner can answer are left as **Owner:** lines.
    """
    import json

    from vlmops.audit.card import data_card
    from vlmops.audit.run import AuditInputs, run_audit
    from vlmops.data.manifest import attribute_columns, resolve_data
    from vlmops.evaluate.slices import default_slice_fields
    from vlmops.evaluate.task import tier_names_for
    from vlmops.evaluate.tiers import tiers_of
    from vlmops.store.embed import content_sha256

    frame = resolve_data(data)
    labels = [x for x in frame["label"] if x is not None]
    tier_names = (
        list(tier_names_for("emoji" if data == "emoji" else "other", tiers_of(labels))) if labels else []
    )
    fields = default_slice_fields(frame, attribute_columns(frame))
    if audit_json is not None:
        try:
            audit = json.loads(audit_json.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot read audit JSON {audit_json}: {exc}; pass a file from `vlmops audit --json`"
            ) from None
        if audit.get("schema") != "vlmops.audit/1":
            raise DataError(f"{audit_json} is not a vlmops audit report (schema vlmops.audit/1)")
    else:
        inputs = AuditInputs(frame, [content_sha256(p) for p in frame["image"]], progress=progress)
        report = run_audit(
            inputs, ["provenance", "balance", "pii"], {"spec": data}, fields, tier_names, min_n
        )
        audit = report.to_dict()
    version = (
        audit["checks"]["provenance"]["details"]["dataset_version"]
        if "provenance" in audit.get("checks", {})
        else None
    )
    if version is None:
        from vlmops.data.version import dataset_version

        version = dataset_version(frame.assign(sha256=[content_sha256(p) for p in frame["image"]]))
    text = data_card(frame, data, version, fields, tier_names, audit, min_n)
    if out is None:
        typer.echo(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        console.print(f"data card -> {out}")
