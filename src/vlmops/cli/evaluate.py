"""`vlmops eval`: accuracy, calibration, conformal sets, robustness, slices, privacy and cost in one run."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmops.cli._common import (
    EXIT_FAILED_CHECK,
    JsonOption,
    console,
    handle_errors,
    print_rule_results,
    print_skipped,
    results_console,
    write_json,
)
from vlmops.cli._ray import RayActorsOption, RayCpusOption, RayMinItemsOption, RayOption, ray_embedding


def _split_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@handle_errors
def evaluate(
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Model URI (builtin:, hf:, open_clip:, onnx:, openai:); default builtin:emoji-lit, or "
        "builtin:emoji-captioner for --task caption/vqa.",
    ),
    task: str = typer.Option(
        "classify",
        "--task",
        help="classify: a dual encoder's zero-shot labels (the sections above); caption or vqa: a "
        "generative model's answers (reference metrics, grounding, hallucination, confidence, slices, cost).",
    ),
    data: str = typer.Option(
        "emoji",
        "--data",
        "-d",
        help="'emoji', an image folder (class/xxx.png) or a manifest (.jsonl/.csv/.parquet).",
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="Split to evaluate; default 'test' when the data has one, else every row. 'all' = every row.",
    ),
    suite: str = typer.Option(
        "standard", "--suite", help="quick | standard | full (see README for what each runs)."
    ),
    labels: str | None = typer.Option(
        None,
        "--labels",
        help="Label tier to classify: emoji: concept | subcategory | category; other data: level1..levelN. "
        "Default: the finest.",
    ),
    template: list[str] = typer.Option(
        None,
        "--template",
        "-t",
        help="Prompt template with one '{}' (repeat to average several, CLIP style).",
    ),
    slices: list[str] = typer.Option(
        None, "--slices", help="An intersection to add, e.g. 'skin_tone,gender' (repeatable)."
    ),
    slice_fields: str | None = typer.Option(
        None, "--slice-fields", help="Comma-separated slice fields; default: every low-cardinality attribute."
    ),
    min_n: int = typer.Option(
        30, "--min-n", min=1, help="Slices with fewer items get a warning and no ranking."
    ),
    alpha: float = typer.Option(
        0.1, "--alpha", help="Conformal miscoverage: sets aim at 1 - alpha coverage."
    ),
    mondrian: str | None = typer.Option(
        None, "--mondrian", help="Also calibrate conformal sets per value of this slice field (Mondrian)."
    ),
    dollars_per_hour: float = typer.Option(
        1.0, "--dollars-per-hour", min=0.0, help="Machine price used for the cost per 1,000 images."
    ),
    fail_on: str | None = typer.Option(
        None,
        "--fail-on",
        help="Failure conditions: exit 1 when one fires (is true), e.g. 'top1<0.5,ece>0.08,slice_gap>0.10'.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for every sample, split, bootstrap and attack."),
    cluster_by: str | None = typer.Option(
        None,
        "--cluster-by",
        help="Column whose values are not independent (bootstrap clusters); emoji: concept.",
    ),
    store: str | None = typer.Option(
        None, "--store", help="Embedding store URL/path (default under VLMOPS_HOME)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per model call."),
    skip_unreadable: bool = typer.Option(
        False,
        "--skip-unreadable",
        help="Leave out rows whose image cannot be read (recorded under data.skipped_unreadable in the "
        "report) instead of stopping with the list of them.",
    ),
    prompt: str | None = typer.Option(
        None,
        "--prompt",
        help="caption: the prompt (default 'Describe this emoji.' / 'Describe this image.').",
    ),
    judge: str | None = typer.Option(
        None, "--judge", help="caption/vqa: a dual encoder for CLIPScore, e.g. builtin:emoji-lit or hf:DIR."
    ),
    vocabulary: Path | None = typer.Option(
        None,
        "--vocabulary",
        help="caption: CHAIR's object vocabulary, one object per line with synonyms after a colon "
        "('dog: puppy, doggy'); default: the data's tags and label names.",
    ),
    max_tokens: int = typer.Option(32, "--max-tokens", min=1, help="caption/vqa: longest answer."),
    temperature: float = typer.Option(
        0.0, "--temperature", min=0.0, help="caption/vqa: 0 decodes greedily (deterministic)."
    ),
    price_in: float | None = typer.Option(
        None, "--price-in", min=0.0, help="caption/vqa: dollars per million prompt tokens (API models)."
    ),
    price_out: float | None = typer.Option(
        None, "--price-out", min=0.0, help="caption/vqa: dollars per million answer tokens (API models)."
    ),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
    ray: str | None = RayOption,
    ray_actors: int = RayActorsOption,
    ray_cpus_per_actor: float = RayCpusOption,
    ray_min_items: int | None = RayMinItemsOption,
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Evaluate a VLM: tiered zero-shot accuracy and retrieval, calibration, conformal sets, robustness
    (corruptions, prompt perturbations, FGSM/PGD, typographic), slices with clustered CIs, privacy, cost.

    Embeddings go through the store, so a re-run with the same model is fast.

    Every image's header is checked first: unreadable images are listed together with their row
    numbers (exit 2), or left out with --skip-unreadable.

    With --task caption or vqa it evaluates a generative model instead (answers cached in the store).

    Exit codes: 0 ok, 1 a --fail-on rule fired, 2 bad input (message says what to fix).
    """
    if task in ("caption", "vqa"):
        from vlmops.cli.evaluate_generative import evaluate_generative

        with ray_embedding(ray, ray_actors, ray_cpus_per_actor, ray_min_items):  # answers, judge vectors
            evaluate_generative(
                model or "builtin:emoji-captioner", data, task, split, suite, prompt, judge, max_tokens,
                temperature, seed, slice_fields, min_n, cluster_by, dollars_per_hour, price_in, price_out,
                fail_on, store, batch_size, skip_unreadable, html, json_out, progress, vocabulary,
            )  # fmt: skip
        return
    if task != "classify":
        raise typer.BadParameter(f"unknown task {task!r}; use classify, caption or vqa", param_hint="--task")
    model = model or "builtin:emoji-lit"
    from vlmops.data.manifest import resolve_data
    from vlmops.data.screen import screen_images, skipped_summary
    from vlmops.data.version import dataset_version
    from vlmops.evaluate.context import EvalContext
    from vlmops.evaluate.headline import HEADLINE
    from vlmops.evaluate.suite import EvalOptions, run_eval
    from vlmops.evaluate.task import build_task
    from vlmops.models import load_model
    from vlmops.report.rules import check_rules, parse_rules
    from vlmops.store.cache import open_cache

    rules = parse_rules(fail_on, HEADLINE)  # bad syntax fails now, before minutes of work
    options = EvalOptions(
        suite=suite,
        alpha=alpha,
        slices=_split_list(slice_fields),
        intersections=[_split_list(s) for s in slices or []],
        mondrian_by=mondrian,
        min_n=min_n,
        seed=seed,
        dollars_per_hour=dollars_per_hour,
    )
    manifest, skipped = screen_images(resolve_data(data), data, skip=skip_unreadable)
    task = build_task(manifest, "emoji" if data == "emoji" else "other", split, labels, template, cluster_by)
    vlm = load_model(model)
    with open_cache(store) as cache:
        ctx = EvalContext(vlm, task, cache, seed=seed, batch_size=batch_size, progress=progress)
        data_meta = {
            "spec": data,
            "dataset_version": dataset_version(task.frame.assign(sha256=ctx.content_keys)),
            "skipped_unreadable": skipped_summary(skipped),
        }
        with ray_embedding(ray, ray_actors, ray_cpus_per_actor):
            report = run_eval(ctx, options, data_meta, manifest, on_section=_announce(progress))
    payload = report.to_dict()
    results = check_rules(rules, report.headline)
    payload["fail_on"] = [r.to_dict() for r in results]
    write_json(payload, json_out)
    if html is not None:
        from vlmops.report.eval_html import write_eval_html

        write_eval_html(payload, html)
    _print_summary(payload, results)
    if any(r.fired for r in results):
        raise typer.Exit(EXIT_FAILED_CHECK)


def _announce(progress: bool):
    def announce(section: str) -> None:
        if progress:
            console.print(f"[dim]eval:[/] {section}")

    return announce


def _print_summary(payload: dict, results: list) -> None:
    from rich.table import Table

    from vlmops.evaluate.headline import HEADLINE

    data = payload["data"]
    table = Table(
        title=f"{payload['model']['uri']} on {data['spec']} [{data['split'] or 'all'}] "
        f"({data['n']} images, {data['n_classes']} classes, suite {payload['suite']})"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("what")
    for name, value in payload["headline"].items():
        shown = "[dim]skipped[/]" if value is None else f"{value:.4g}"
        table.add_row(name, shown, HEADLINE[name][1])
    results_console.print(table)
    print_skipped(data.get("skipped_unreadable"))
    for slice_field in payload["slices"]["fields"]:
        for stat in slice_field["slices"]:
            if stat.get("warning"):
                console.print(
                    f"[yellow]warning:[/] {slice_field['field']}={stat['value']}: {stat['warning']}"
                )
    print_rule_results(results)
