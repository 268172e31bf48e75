"""`vlmops monitor run` (drift, estimated accuracy, feedback, alerts over the serve log) and history."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.table import Table

from vlmops.cli._common import (
    EXIT_FAILED_CHECK,
    JsonOption,
    console,
    format_time,
    handle_errors,
    results_console,
    write_json,
)
from vlmops.errors import VlmopsError

app = typer.Typer(
    help="Watch a served model: drift, label-free accuracy, feedback, alerts.", no_args_is_help=True
)
StoreOption = typer.Option(
    None, "--store", help="Store URL or path (default: VLMOPS_STORE_URL or VLMOPS_HOME)."
)


def _parse_filter(text: str | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        column, sep, values = part.partition("=")
        if not sep or not values:
            raise VlmopsError(f"--reference-filter {part!r}: use COLUMN=v1,v2 (several joined with ';')")
        out[column.strip()] = [v.strip() for v in values.split(",")]
    return out


def build_reference(
    model,
    data: str,
    split: str,
    where: dict[str, list[str]],
    tier: str | None,
    store: str | None,
    progress: bool,
    queries: Path | None = None,
):
    """Reference embeddings, label indices, class embeddings, image statistics and query embeddings.

    Query-text drift compares logged search queries with `queries` (a text file, one query per line) or,
    without one, with the split's label names: what users of a tagged collection typically search for.
    """
    import numpy as np

    from vlmops.data.images import load_image
    from vlmops.data.manifest import resolve_data
    from vlmops.evaluate.task import build_task
    from vlmops.models.image_stats import describe_image
    from vlmops.monitor.run import Reference
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import embed_images_cached

    task = build_task(resolve_data(data), "emoji" if data == "emoji" else "other", "all", tier)
    frame = task.frame
    # a copy: pandas may hand out a read-only view, and the filter below narrows `keep` in place
    keep = (frame["split"] == split).to_numpy(copy=True) if "split" in frame else None
    if keep is None or not keep.any():
        raise VlmopsError(f"no records in split {split!r} of {data}; pick another --reference-split")
    for column, values in where.items():
        if column not in frame:
            raise VlmopsError(f"--reference-filter column {column!r} is not in the data")
        keep &= frame[column].astype(str).isin(values).to_numpy()
    rows = keep.nonzero()[0]
    if len(rows) < 20:
        raise VlmopsError(
            f"only {len(rows)} reference records after filtering; a reference needs at least 20"
        )
    with open_cache(store) as cache:
        emb, _ = embed_images_cached(model, [frame["image"][i] for i in rows], cache, progress=progress)
    index = {c: i for i, c in enumerate(task.classes)}
    targets = [index[task.labels[i]] for i in rows]
    class_emb = model.embed_texts([task.templates[0].format(name) for name in task.class_names])
    image_stats = []
    for i in rows:
        data = Path(frame["image"][i]).read_bytes()  # read once: decoded and measured from the same bytes
        image_stats.append(describe_image(load_image(data), data))
    if queries is None:
        texts = sorted({task.class_names[target] for target in targets})
    else:
        texts = [line.strip() for line in queries.read_text().splitlines() if line.strip()]
        if len(texts) < 20:
            raise VlmopsError(
                f"{queries} has {len(texts)} queries; --reference-queries needs at least 20 lines"
            )
    return Reference(
        emb.astype(np.float64),
        np.asarray(targets),
        class_emb.astype(np.float64),
        model.logit_scale,
        image_stats=image_stats,
        query_emb=model.embed_texts(texts).astype(np.float64),
    )


@app.command("run")
@handle_errors
def run(
    model: str = typer.Option("builtin:emoji-lit", "--model", "-m", help="The served model's URI."),
    runtime: str = typer.Option(
        "auto", "--runtime", help="The served runtime (its version is in the log); auto: as `serve`."
    ),
    reference_data: str = typer.Option("emoji", "--reference-data", help="Labelled data of healthy traffic."),
    reference_split: str = typer.Option("val", "--reference-split", help="Split of the reference data."),
    reference_filter: str | None = typer.Option(
        None, "--reference-filter", help="e.g. 'vendor=google,twitter' (several joined with ';')."
    ),
    labels: str | None = typer.Option(
        None, "--labels", help="Label tier the server classifies at (default finest)."
    ),
    reference_queries: Path | None = typer.Option(
        None,
        "--reference-queries",
        exists=True,
        dir_okay=False,
        help="Typical search queries, one per line, for query-text drift (default: the label names).",
    ),
    window: int = typer.Option(200, "--window", min=10, help="How many of the latest requests to test."),
    judge: str = typer.Option(
        "builtin:emoji-lit",
        "--judge",
        help="Dual encoder that reads chat answers (answer drift, grounding, hallucination estimate).",
    ),
    chat_version: str | None = typer.Option(
        None,
        "--chat-version",
        help="Model version of the chat traffic to watch (default: the --model's version).",
    ),
    images: Path | None = typer.Option(
        None,
        "--images",
        exists=True,
        file_okay=False,
        help="The server's --keep-images folder: grounding and hallucination need the chat images.",
    ),
    vocabulary: Path | None = typer.Option(
        None,
        "--vocabulary",
        exists=True,
        dir_okay=False,
        help="Objects for the hallucination estimate, one per line ('dog: puppy'); default: the "
        "reference data's tags.",
    ),
    ocr: bool = typer.Option(
        True,
        "--ocr/--no-ocr",
        help="Read the text in the kept chat images (Tesseract) for injection attempts drawn into them.",
    ),
    rules: Path | None = typer.Option(None, "--rules", help="Alert rules YAML; exit 1 when one fires."),
    seed: int = typer.Option(0, "--seed"),
    rollback_canary: bool = typer.Option(
        False,
        "--rollback-canary",
        help="When an alert fires on the registry's canary, clear the canary alias "
        "(servers started with --follow-registry stop routing to it).",
    ),
    store: str | None = StoreOption,
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Test the latest requests against a healthy reference; exit 1 when an alert rule fires (for cron/CI).

    Metrics: drift.{mmd,ks_pca,prediction_shift,alignment,image_stats,query_text}.{p_value,statistic,drifted},
    estimate.{ac,atc,doc,naive_confidence,reference_accuracy}, alignment.mean,
    feedback.{acceptance_rate,correction_rate,abstention_rate,realised_accuracy,human_feedback,...},
    window.n, window.queries. image_stats tests the logged image statistics and query_text the /v1/search
    text queries; each runs only when the log holds enough of them.

    Chat traffic (/v1/chat/completions) of --chat-version adds generative.{answer_embedding,answer_length,
    finish_reason,refusal_rate,grounding,hallucination,pii,injection,image_injection}.{p_value,statistic,
    drifted,reference,window} (the latest --window exchanges against the earlier ones),
    generative.{injection,image_injection,pii}.count and generative.usage.* (latency, TTFT, tokens, cost;
    per key in the JSON). grounding, hallucination and image_injection (text in the images, read by
    Tesseract) need the server's kept images (--images). --model may be a generative model: then only
    chat is watched.
    """
    from vlmops.evaluate.task import DEFAULT_TEMPLATES
    from vlmops.export.runtimes import load_runtime
    from vlmops.models import capabilities, load_model
    from vlmops.monitor.alerts import AlertStore, evaluate_rules, load_rules
    from vlmops.monitor.chat_frame import chat_versions
    from vlmops.monitor.generative import GenerativeConfig
    from vlmops.monitor.run import run_monitor
    from vlmops.store.cache import open_cache
    from vlmops.store.log import PredictionLog

    config = load_rules(rules) if rules else None  # bad rules fail before any work
    vlm = load_runtime(model, runtime)
    log = PredictionLog(store)
    reference = None
    if capabilities(vlm)["embed"]:
        reference = build_reference(
            vlm,
            reference_data,
            reference_split,
            _parse_filter(reference_filter),
            labels,
            store,
            progress,
            reference_queries,
        )
    watched = chat_version or vlm.info.version
    with contextlib.ExitStack() as stack:  # the embedding cache stays open for the pass
        generative = None
        if chat_versions(log).get(watched):
            judge_model = vlm if judge == model and reference is not None else load_model(judge)
            if not capabilities(judge_model)["embed"]:
                raise VlmopsError(f"--judge {judge} cannot embed images and texts; give a dual encoder")
            generative = GenerativeConfig(
                judge=judge_model,
                cache=stack.enter_context(open_cache(store)),
                images=images,
                vocabulary=_chat_vocabulary(images, vocabulary, reference_data),
                object_template=DEFAULT_TEMPLATES["emoji" if reference_data == "emoji" else "other"][0],
                ocr=None if ocr else False,
                progress=progress,
            )
        report = run_monitor(
            log, vlm.info.version, reference, window, seed, generative=generative, chat_version=watched
        )
    fired = (
        evaluate_rules(config, report.metrics, report.n, AlertStore(store), vlm.info.version)
        if config
        else []
    )
    table = Table("metric", "value")
    for key, value in report.metrics.items():
        if key.endswith((".p_value", ".drifted")) or key.startswith(
            ("estimate.", "feedback.acc", "window", "generative.window", "generative.usage.cost")
        ):
            table.add_row(key, "n/a" if value is None else f"{value:.4g}")
    results_console.print(table)
    for alert in fired:
        results_console.print(f"[bold red]ALERT[/] {alert['rule']}: {alert['metric']} = {alert['value']:.4g}")
    if fired and rollback_canary:
        from vlmops.registry.store import Registry

        registry = Registry(store)
        if registry.alias("canary") == vlm.info.version:
            reason = "alert: " + ", ".join(a["rule"] for a in fired)
            registry.clear_alias("canary", kind="rollback", reason=reason)
            console.print(f"[bold red]canary {vlm.info.version} rolled back[/] ({reason})")
    write_json({**report.to_dict(), "alerts": fired}, json_out)
    if fired:
        raise typer.Exit(EXIT_FAILED_CHECK)


@app.command("history")
@handle_errors
def history(store: str | None = StoreOption, json_out: Path | None = JsonOption) -> None:
    """Every stored monitoring pass and every fired alert."""
    from vlmops.monitor.alerts import AlertStore
    from vlmops.monitor.run import monitor_history

    runs = monitor_history(store)
    fired = AlertStore(store).list()
    table = Table("time (UTC)", "model", "n", "mmd p", "est. acc (ATC)", "chat drift", "alerts fired")
    for i, r in enumerate(runs):
        m = r["metrics"]
        end = runs[i + 1]["time"] if i + 1 < len(runs) else float("inf")
        during = [a for a in fired if r["time"] <= a["time"] < end]  # alerts are stored after their pass
        table.add_row(
            format_time(r["time"]),
            r["model_version"],
            str(r["n"]),
            _num(m.get("drift.mmd.p_value"), ".3g"),
            _num(m.get("estimate.atc"), ".3f"),
            _chat_drift(m),
            "\n".join(f"[red]{a['rule']}[/] ({a['metric']} = {a['value']:.4g})" for a in during) or "none",
        )
    results_console.print(table)
    for a in [a for a in fired if not runs or a["time"] < runs[0]["time"]]:
        results_console.print(
            f"[red]alert[/] {format_time(a['time'])} {a['rule']}: {a['metric']} = {a['value']:.4g}"
        )
    runs_out = [{k: v for k, v in r.items() if k != "results"} for r in runs]
    write_json({"runs": runs_out, "alerts": fired}, json_out)


def _chat_vocabulary(images: Path | None, vocabulary: Path | None, reference_data: str) -> dict | None:
    """Objects for the hallucination estimate (which runs only with the kept images): the file, or the
    reference data's tags."""
    from vlmops.evaluate.hallucination import read_vocabulary
    from vlmops.monitor.grounding import data_vocabulary

    if images is None:
        return None
    return read_vocabulary(vocabulary) if vocabulary else data_vocabulary(reference_data)


def _chat_drift(metrics: dict) -> str:
    """The generative detectors that flagged a pass ('n/a' when it saw no chat traffic)."""
    names = [
        k.split(".")[1] for k, v in metrics.items() if k.startswith("generative.") and k.endswith(".drifted")
    ]
    if not names:
        return "n/a"
    return ", ".join(n for n in names if metrics[f"generative.{n}.drifted"] == 1.0) or "none"


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


@app.command("dashboard")
@handle_errors
def dashboard(
    out: Path = typer.Option(Path("dashboard.html"), "--out", "-o", help="HTML file to write."),
    store: str | None = StoreOption,
) -> None:
    """Write the monitoring dashboard (drift timeline, estimated vs realised accuracy, alerts, versions)."""
    from vlmops.monitor.dashboard import render_dashboard
    from vlmops.report.html import write_html

    path = write_html(render_dashboard(store), out)
    results_console.print(f"dashboard: {path}", highlight=False)
