"""`vlmops audit` (data governance checks) and `vlmops audit redact` (a PII-free copy of a data set)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlmops.cli._common import (
    EXIT_FAILED_CHECK,
    JsonOption,
    console,
    handle_errors,
    print_rule_results,
    results_console,
    write_json,
)
from vlmops.cli._ray import RayActorsOption, RayCpusOption, RayOption, ray_embedding

app = typer.Typer(
    help="Audit an image-text data set: provenance, quality, duplicates, leakage, labels, PII, poisoning.",
    invoke_without_command=True,
    no_args_is_help=False,
)

DataOption = typer.Option(
    None,
    "--data",
    "-d",
    help="'emoji', an image folder (class/xxx.png) or a manifest (.jsonl/.csv/.parquet).",
)


@app.callback()
@handle_errors
def audit(
    ctx: typer.Context,
    data: str | None = DataOption,
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Model URI for embedding checks (labels, alignment, near-dups, poisoning).",
    ),
    checks: str = typer.Option("all", "--checks", help="'all' or a comma list, e.g. quality,duplicates,pii."),
    fail_on: str | None = typer.Option(
        None,
        "--fail-on",
        help="Failure conditions: exit 1 when one fires (is true), e.g. 'near_dup_rate>0.01,pii>0'.",
    ),
    quarantine: Path | None = typer.Option(
        None, "--quarantine", help="Write records with error-severity findings to this JSONL file."
    ),
    min_n: int = typer.Option(
        30, "--min-n", min=1, help="Groups smaller than this count as under-represented."
    ),
    label_method: str = typer.Option(
        "knn", "--label-method", help="knn | logistic: out-of-sample label model."
    ),
    store: str | None = typer.Option(
        None, "--store", help="Embedding store URL/path (default under VLMOPS_HOME)."
    ),
    ann_threshold: int | None = typer.Option(
        None,
        "--ann-threshold",
        min=0,
        help="Neighbour searches over more records use an approximate (faiss IVF) index; below, exact. "
        "Default 50000 or VLMOPS_ANN_THRESHOLD.",
    ),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
    ray: str | None = RayOption,
    ray_actors: int = RayActorsOption,
    ray_cpus_per_actor: float = RayCpusOption,
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Audit a data set and report every finding (record id, check, severity, evidence).

    Exit codes: 0 ok, 1 a --fail-on rule fired, 2 bad input (the message says what to fix).
    """
    if ctx.invoked_subcommand is not None:
        return
    if data is None:
        raise typer.BadParameter("--data is required (e.g. --data emoji)")
    from vlmops.audit.run import CHECKS, parse_checks
    from vlmops.report.rules import RuleError, check_rules, parse_rules

    chosen = parse_checks(checks)
    if label_method not in ("knn", "logistic"):
        raise typer.BadParameter(f"--label-method must be knn or logistic, got {label_method!r}")
    parse_rules(fail_on)  # bad syntax fails now, before the audit's work
    with ray_embedding(ray if model else None, ray_actors, ray_cpus_per_actor):  # no model, no embedding
        report, frame = _run(data, model, chosen, min_n, label_method, store, progress, ann_threshold)
    metrics = report.metrics
    try:
        rules = parse_rules(fail_on, metrics)
    except RuleError as exc:
        others = [c for c in CHECKS if c not in chosen]
        hint = f"; a metric of another check needs it in --checks ({', '.join(others)})" if others else ""
        raise RuleError(f"{exc} (from the checks run: {', '.join(chosen)}){hint}") from None
    results = check_rules(rules, metrics)
    payload = report.to_dict()
    payload["fail_on"] = [r.to_dict() for r in results]
    write_json(payload, json_out)
    if quarantine is not None:
        n = _write_quarantine(report, quarantine)
        results_console.print(f"quarantine: {n} records -> {quarantine}", highlight=False)
    if html is not None:
        from vlmops.report.audit_html import write_audit_html

        write_audit_html(payload, html, images=dict(zip(frame["id"], frame["image"], strict=True)))
    _print_summary(payload, results)
    if any(r.fired for r in results):
        raise typer.Exit(EXIT_FAILED_CHECK)


def _run(
    data: str,
    model: str | None,
    checks: list[str],
    min_n: int,
    label_method: str,
    store,
    progress: bool,
    ann_threshold: int | None = None,
):
    from vlmops.audit.run import AuditInputs, run_audit
    from vlmops.data.manifest import attribute_columns, resolve_data
    from vlmops.evaluate.slices import default_slice_fields
    from vlmops.evaluate.task import DEFAULT_TEMPLATES, tier_names_for
    from vlmops.evaluate.tiers import tiers_of
    from vlmops.models import load_model
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import content_sha256

    frame = resolve_data(data)
    vlm = load_model(model) if model else None
    labels = [x for x in frame["label"] if x is not None]
    tier_names = tier_names_for("emoji" if data == "emoji" else "other", tiers_of(labels)) if labels else []
    fields = default_slice_fields(frame, attribute_columns(frame))
    hashes = [content_sha256(p) for p in frame["image"]]
    data_meta = {"spec": data, "n": len(frame), "slice_fields": fields}
    with open_cache(store) as cache:
        template = DEFAULT_TEMPLATES["emoji" if data == "emoji" else "other"][0]
        inputs = AuditInputs(frame, hashes, vlm, cache, progress, prompt_template=template)
        announce = (lambda name: console.print(f"[dim]audit:[/] {name}")) if progress else None
        report = run_audit(
            inputs, checks, data_meta, fields, tier_names, min_n, label_method, announce, ann_threshold
        )
        return report, frame


def _write_quarantine(report, path: Path) -> int:
    by_record: dict[str, list[dict]] = {}
    for finding in report.findings:
        if finding.severity == "error" and not finding.record_id.startswith("group:"):
            by_record.setdefault(finding.record_id, []).append(finding.to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        for record_id, findings in by_record.items():
            fh.write(json.dumps({"record_id": record_id, "findings": findings}) + "\n")
    tmp.replace(path)
    return len(by_record)


def _print_summary(payload: dict, results: list) -> None:
    from rich.table import Table

    table = Table(title=f"audit of {payload['data']['spec']} ({payload['data']['n']} records)")
    for column in ("check", "errors", "warnings", "info", "key metrics"):
        table.add_column(column, justify="right" if column in ("errors", "warnings", "info") else "left")
    for name, check in payload["checks"].items():
        counts = payload["summary"][name]
        if "skipped" in check:
            table.add_row(name, "", "", "", f"[dim]skipped: {check['skipped']}[/]")
            continue
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in list(check["metrics"].items())[:4])
        table.add_row(name, str(counts["error"]), str(counts["warning"]), str(counts["info"]), shown)
    results_console.print(table)
    print_rule_results(results)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command("redact")
@handle_errors
def redact(
    data: str | None = DataOption,
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for the cleaned manifest.jsonl and image copies."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow writing into a non-empty --out folder."),
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Write a PII-redacted copy of a manifest (texts, labels, attributes) and EXIF-stripped image copies.

    The original files are never modified.
    """
    from vlmops.audit.redact import redact_manifest
    from vlmops.data.manifest import resolve_data

    if data is None:
        raise typer.BadParameter("--data is required (e.g. --data my_manifest.jsonl)")
    try:
        summary = redact_manifest(resolve_data(data), out, progress=progress, overwrite=overwrite)
    except ValueError as exc:
        from vlmops.errors import DataError

        raise DataError(str(exc)) from None
    texts, images = summary.get("texts_redacted", 0), summary.get("images_cleaned", 0)
    results_console.print(f"redacted {texts} texts, cleaned {images} images -> {out}", highlight=False)
    write_json(summary, json_out)
