"""`vlmops registry ...` (versions, aliases, promote, rollback, history) and `vlmops gate`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from vlmops.cli._common import (
    EXIT_FAILED_CHECK,
    JsonOption,
    format_time,
    handle_errors,
    results_console,
    write_json,
)
from vlmops.errors import VlmopsError

app = typer.Typer(
    help="Model registry: versions, aliases (champion, challenger, canary), history.", no_args_is_help=True
)
StoreOption = typer.Option(
    None, "--store", help="Store URL or path (default: VLMOPS_STORE_URL or VLMOPS_HOME)."
)


def _registry(store: str | None):
    from vlmops.registry.store import Registry

    return Registry(store)


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VlmopsError(
            f"cannot read eval report {path}: {exc}; write one with `vlmops eval --json`"
        ) from None
    if report.get("schema") not in ("vlmops.eval/1", "vlmops.geneval/1"):
        raise VlmopsError(
            f"{path} is not a vlmops eval report (schema vlmops.eval/1, or vlmops.geneval/1 from "
            "`vlmops eval --task caption|vqa`)"
        )
    return report


def _model_folder(uri: str) -> Path | None:
    """The folder holding a model's files, when the URI names one (copied into the registry)."""
    target = uri.partition(":")[2]
    folder = target.partition("@")[2] if uri.startswith("builtin:") else target
    return Path(folder).expanduser() if folder and Path(folder).expanduser().is_dir() else None


def _change(event: dict) -> str:
    """'old -> new' for an alias event; an alias that pointed nowhere reads '(unset)'."""
    return f"{event['from_version'] or '(unset)'} -> {event['to_version'] or '(unset)'}"


@app.command("register")
@handle_errors
def register(
    model: str = typer.Option(..., "--model", "-m", help="Model URI to register."),
    eval_report: Path | None = typer.Option(None, "--eval", help="Its `vlmops eval --json` report."),
    parent: str | None = typer.Option(None, "--parent", help="Version or alias it was derived from."),
    alias: str | None = typer.Option(None, "--alias", help="Point this alias at it (e.g. challenger)."),
    notes: str | None = typer.Option(None, "--notes", help="Free text kept with the version."),
    store: str | None = StoreOption,
    json_out: Path | None = JsonOption,
) -> None:
    """Register a model version (weights hash, training-data version, eval report, parent)."""
    from vlmops.models import load_model

    vlm = load_model(model)
    card = getattr(vlm, "card", None) or {}
    registry = _registry(store)
    parent_version = registry.get(parent)["version"] if parent else None
    row = registry.register(
        vlm.info.version,
        model,
        vlm.info.weights_sha256,
        (card.get("data") or {}).get("train_version"),
        parent_version,
        _read_report(eval_report) if eval_report else None,
        notes,
        _model_folder(model),
    )
    if alias:
        registry.set_alias(alias, row["version"], reason=notes)
    results_console.print(f"registered {row['version']}" + (f" as {alias}" if alias else ""))
    write_json({k: v for k, v in row.items() if k != "eval_report"}, json_out)


@app.command("list")
@handle_errors
def list_versions(store: str | None = StoreOption, json_out: Path | None = JsonOption) -> None:
    """Every version with its aliases."""
    rows = _registry(store).list()
    table = Table("version", "aliases", "parent", "data version", "eval")
    for r in rows:
        table.add_row(
            r["version"],
            ", ".join(r["aliases"]),
            r["parent"] or "",
            (r["data_version"] or "")[:12],
            "yes" if r["has_eval"] else "",
        )
    results_console.print(table)
    write_json(rows, json_out)


@app.command("promote")
@handle_errors
def promote(
    ref: str = typer.Argument(..., help="Version or alias (e.g. challenger)."),
    reason: str | None = typer.Option(None, "--reason"),
    store: str | None = StoreOption,
) -> None:
    """Make a version the champion (recorded with its reason)."""
    event = _registry(store).promote(ref, reason=reason)
    results_console.print(f"champion: {_change(event)}", highlight=False)


@app.command("rollback")
@handle_errors
def rollback(
    alias: str = typer.Option("champion", "--alias"),
    reason: str | None = typer.Option(None, "--reason"),
    store: str | None = StoreOption,
) -> None:
    """Point an alias back at the version it held before."""
    event = _registry(store).rollback(alias, reason=reason)
    results_console.print(f"{alias}: {_change(event)} (rollback)", highlight=False)


@app.command("alias")
@handle_errors
def set_alias(
    alias: str = typer.Argument(..., help="champion, challenger, canary or shadow."),
    ref: str = typer.Argument(..., help="Version or alias."),
    store: str | None = StoreOption,
) -> None:
    """Point an alias at a version."""
    event = _registry(store).set_alias(alias, ref)
    results_console.print(f"{alias}: {_change(event)}", highlight=False)


@app.command("history")
@handle_errors
def history(
    alias: str | None = typer.Option(None, "--alias"),
    store: str | None = StoreOption,
    json_out: Path | None = JsonOption,
) -> None:
    """Every registry event (which version served when, and why it changed)."""
    rows = _registry(store).history(alias)
    table = Table("time (UTC)", "kind", "alias", "from", "to", "reason")
    for r in rows:
        table.add_row(
            format_time(r["time"]),
            r["kind"],
            r["alias"] or "",
            *(r[k] or ("(unset)" if r["alias"] else "") for k in ("from_version", "to_version")),
            r["reason"] or "",
        )
    results_console.print(table)
    write_json(rows, json_out)


@app.command("canary-check")
@handle_errors
def canary_check(
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the one-sided Fisher test."),
    min_feedback: int = typer.Option(
        20, "--min-feedback", min=1, help="Judged answers each side needs before a verdict."
    ),
    rollback: bool = typer.Option(False, "--rollback", help="Clear the canary alias when it is worse."),
    store: str | None = StoreOption,
    json_out: Path | None = JsonOption,
) -> None:
    """Is the canary's traffic rejected by people more often than the champion's? Exit 1 when it is.

    Reads the human feedback on requests each version answered since the canary alias was set (any
    model kind: corrected chat answers count as rejections). With --rollback a worse canary's alias is
    cleared (a rollback event), which ends it in servers that follow the registry.
    """
    from vlmops.registry.canary import canary_check as check
    from vlmops.store.log import PredictionLog

    registry = _registry(store)
    canary, champion = registry.alias("canary"), registry.alias("champion")
    if canary is None or champion is None:
        raise VlmopsError("canary-check needs both a canary and a champion alias; see `vlmops registry list`")
    started = [e["time"] for e in registry.history("canary") if e["to_version"] == canary]
    result = check(
        PredictionLog(store), canary, champion, alpha, min_feedback, started[-1] if started else None
    )
    table = Table("version", "role", "judged", "rejected", "mean rating")
    for version, role in ((champion, "champion"), (canary, "canary")):
        rating = result.mean_rating[version]
        table.add_row(
            version,
            role,
            str(result.judged[version]),
            str(result.rejected[version]),
            "" if rating is None else f"{rating:.2f}",
        )
    results_console.print(table)
    p_worse = "n/a" if result.p_worse is None else f"{result.p_worse:.3g}"
    if not result.enough:
        results_console.print(f"[yellow]not enough feedback yet[/] (each side needs {min_feedback})")
    elif result.worse:
        results_console.print(
            f"[bold red]canary {canary} is worse[/] (Fisher p = {p_worse})", highlight=False
        )
        if rollback:
            reason = f"canary-check: rejected more often than the champion (p = {p_worse})"
            registry.clear_alias("canary", kind="rollback", reason=reason)
            results_console.print(f"canary: {canary} -> (unset) (rollback)", highlight=False)
    else:
        results_console.print(f"[green]canary not worse[/] (Fisher p = {p_worse})", highlight=False)
    write_json(result.to_dict(), json_out)
    if result.worse:
        raise typer.Exit(EXIT_FAILED_CHECK)


def _report_for(ref: str, store: str | None) -> dict:
    path = Path(ref)
    if path.suffix == ".json" or path.exists():
        return _read_report(path)
    report = _registry(store).get(ref)["eval_report"]
    if report is None:
        raise VlmopsError(f"{ref} has no eval report in the registry; register it with --eval REPORT.json")
    return report


@handle_errors
def gate(
    candidate: str = typer.Option(..., "--candidate", help="Eval report JSON, or a registry version/alias."),
    baseline: str = typer.Option(
        "champion", "--baseline", help="Eval report JSON, or a registry version/alias."
    ),
    rules: str | None = typer.Option(
        None,
        "--rules",
        help="e.g. 'top1_drop<=0.01,ece_increase<=0.02'. Default: top1_drop<=0.01, worst_slice_drop<=0.02, "
        "ece_increase<=0.02 and robustness_drop<=0.02, each where both reports have its metric. "
        "Generative reports: none by default (the paired test decides); cider_d_drop, exact_match_drop, "
        "vqa_accuracy_drop and chair_s_increase where given.",
    ),
    alpha: float = typer.Option(
        0.05, "--alpha", help="Significance level of the paired test (McNemar; Wilcoxon for generative)."
    ),
    store: str | None = StoreOption,
    json_out: Path | None = JsonOption,
) -> None:
    """May the candidate replace the baseline? Exit 0 pass, 1 fail, 2 bad input.

    Checks tolerances on top-1, worst-slice top-1, ECE and corruption top-1, and an exact McNemar test
    on the per-item outcomes of the same evaluation items. Generative reports (`vlmops eval --task
    caption|vqa`): a one-sided Wilcoxon signed-rank test on per-item CIDEr-D (captions) or exact match
    (answers), and tolerances on CIDEr-D, exact match, VQA accuracy and CHAIR_s where --rules asks.
    """
    from vlmops.registry.gate import gate as run_gate

    decision = run_gate(_report_for(candidate, store), _report_for(baseline, store), rules or None, alpha)
    table = Table("check", "value", "limit", "result", "note")
    for check in decision.checks:
        value = "n/a" if check.value is None else f"{check.value:+.4f}"
        table.add_row(
            check.rule, value, f"{check.limit:g}", "[green]pass" if check.passed else "[red]FAIL", check.note
        )
    results_console.print(table)
    for line in decision.not_checked:
        results_console.print(f"[yellow]not checked[/] {line}", highlight=False)
    results_console.print("[bold green]gate passed" if decision.passed else "[bold red]gate failed")
    write_json(decision.to_dict(), json_out)
    if not decision.passed:
        raise typer.Exit(EXIT_FAILED_CHECK)


@handle_errors
def retrain(
    model: str = typer.Option(
        "builtin:emoji-lit", "--model", "-m", help="The model to fine-tune (built-in)."
    ),
    archive: Path | None = typer.Option(
        None, "--archive", help="The image archive of `vlmops serve --keep-images`."
    ),
    images: str | None = typer.Option(
        None,
        "--images",
        help="Captioners: data whose sha256 and image columns find the chat images ('emoji' or a manifest), "
        "besides or instead of --archive.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the new model (builtin:NAME@OUT)."),
    data: str = typer.Option(
        "emoji", "--data", "-d", help="Labelled data: the label set and the replay images."
    ),
    labels: str | None = typer.Option(None, "--labels", help="Label tier the server classifies at."),
    replay: int = typer.Option(1024, "--replay", min=0, help="Original training images mixed in."),
    epochs: int = typer.Option(4, "--epochs", min=1),
    lr: float = typer.Option(3e-4, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    register_as: str | None = typer.Option(
        "challenger", "--register-as", help="Alias in the registry ('' = none)."
    ),
    gate_split: str | None = typer.Option(
        "test", "--gate-split", help="Evaluate both models on this split of --data and gate ('' = skip)."
    ),
    gate_sample: int = typer.Option(
        200, "--gate-sample", min=0, help="Captioners: images of --gate-split to gate on (0 = all)."
    ),
    rules: str | None = typer.Option(None, "--rules", help="Gate rules (default: top-1, worst slice, ECE)."),
    feedback_from: str = typer.Option(
        "labellers",
        "--feedback-from",
        help="labellers: only feedback from active keys with the feedback scope (and keyless feedback "
        "of an --insecure-no-auth server); any: every key's feedback.",
    ),
    store: str | None = StoreOption,
    json_out: Path | None = JsonOption,
) -> None:
    """Fine-tune on human-verified feedback plus replay of the original training data.

    builtin:emoji-lit: the image tower, from feedback on classify requests. builtin:emoji-captioner: the
    decoder, from corrected answers to chat completions (images from --archive and/or --images), with
    replay of the training questions. Labels that came from a model (feedback source "model") are never
    used: the feedback-loop guard. By default neither are labels from revoked keys or keys without the
    feedback scope (--feedback-from). The result is registered (default alias: challenger) with the
    served model as its parent; then both are evaluated on --gate-split and gated (captioners: captions
    and questions of --gate-sample images, paired tests). Exit 1 when the gate fails.
    """
    from vlmops.data.manifest import resolve_data
    from vlmops.evaluate.task import build_task
    from vlmops.models import load_model
    from vlmops.models.captioner import EmojiCaptioner
    from vlmops.registry.retrain import RetrainConfig, retrain_from_feedback
    from vlmops.serve.archive import ImageArchive
    from vlmops.store.log import PredictionLog

    vlm = load_model(model)
    if isinstance(vlm, EmojiCaptioner):
        from vlmops.cli.retrain_captioner import retrain_captioner_command

        options = {"data": data, "replay": replay, "epochs": epochs, "lr": lr, "seed": seed}
        options |= {"register_as": register_as, "gate_split": gate_split, "gate_sample": gate_sample}
        options |= {"rules": rules, "feedback_from": feedback_from, "store": store, "json_out": json_out}
        retrain_captioner_command(vlm, model, archive, images, out, **options)
        return
    if archive is None:
        raise VlmopsError(f"retraining {model} needs --archive: the images `vlmops serve --keep-images` kept")
    task = build_task(resolve_data(data), "emoji" if data == "emoji" else "other", "all", labels)
    config = RetrainConfig(epochs=epochs, lr=lr, seed=seed)
    summary = retrain_from_feedback(
        vlm, task, PredictionLog(store), ImageArchive(archive), out, config, replay, feedback_from
    )
    if register_as:
        registry = _registry(store)
        if registry.find(vlm.info.version) is None:
            registry.register(vlm.info.version, model, vlm.info.weights_sha256)
        counts = summary["feedback"]
        registry.register(
            summary["version"],
            f"builtin:emoji-lit@{out}",
            summary["weights_sha256"],
            parent=vlm.info.version,
            notes=f"retrained on {counts.get('used', 0)} verified examples",
        )
        registry.set_alias(register_as, summary["version"], reason="retrained from feedback", evidence=counts)
    counts = summary["feedback"]
    results_console.print(
        f"retrained {vlm.info.version} -> {summary['version']} on {counts.get('used', 0)} verified examples "
        f"+ {summary['replay']} replay images; feedback: {counts}"
    )
    if gate_split:
        summary["gate"] = _gate_retrained(
            vlm, summary, out, data, gate_split, labels, rules, store, attach=bool(register_as)
        )
    write_json(summary, json_out)
    if gate_split and not summary["gate"]["passed"]:
        raise typer.Exit(EXIT_FAILED_CHECK)


def _gate_retrained(
    parent,
    summary: dict,
    out: Path,
    data: str,
    split: str,
    labels: str | None,
    rules: str | None,
    store: str | None,
    attach: bool,
) -> dict:
    """Quick-suite evals of parent and retrained model on `split`, the gate; reports go to the registry."""
    from vlmops.data.manifest import resolve_data
    from vlmops.evaluate.task import build_task
    from vlmops.models import load_model
    from vlmops.registry.evaluation import eval_report
    from vlmops.registry.gate import gate

    task = build_task(resolve_data(data), "emoji" if data == "emoji" else "other", split, labels)
    base = eval_report(parent, task)
    candidate = eval_report(load_model(f"builtin:emoji-lit@{out}"), task)
    decision = gate(candidate, base, rules or None)  # default rules follow the quick suite's sections
    if attach:  # the default store (store=None) counts too
        registry = _registry(store)
        registry.attach_eval(parent.info.version, base)
        registry.attach_eval(summary["version"], candidate)
    verdict = "[green]passed" if decision.passed else "[red]FAILED"
    results_console.print(
        f"gate on {split}: top-1 {base['headline']['top1']:.3f} -> {candidate['headline']['top1']:.3f}, "
        f"{verdict}"
    )
    return decision.to_dict()
