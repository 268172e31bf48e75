"""`vlmops eval --task caption|vqa`: the generative half of `vlmops eval` (see `evaluate.generative`)."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmops.cli._common import (
    EXIT_FAILED_CHECK,
    console,
    print_rule_results,
    print_skipped,
    results_console,
    write_json,
)
from vlmops.progress import progress_bar


def evaluate_generative(
    model_uri: str, data: str, task_name: str, split: str | None, suite: str, prompt: str | None,
    judge_uri: str | None,
    max_tokens: int, temperature: float, seed: int, slice_fields: str | None, min_n: int,
    cluster_by: str | None, dollars_per_hour: float, price_in: float | None, price_out: float | None,
    fail_on: str | None, store: str | None, batch_size: int, skip_unreadable: bool, html: Path | None,
    json_out: Path | None, progress: bool, vocabulary_file: Path | None = None,
) -> None:  # fmt: skip
    """Run the caption/VQA evaluation with the options of `vlmops eval` and print its summary."""
    from vlmops.data.manifest import resolve_data
    from vlmops.data.screen import screen_images, skipped_summary
    from vlmops.errors import ModelLoadError
    from vlmops.evaluate.generative import GenerativeOptions, build_generative_task
    from vlmops.evaluate.generative_suite import GENERATIVE_HEADLINE, run_generative_eval
    from vlmops.evaluate.hallucination import read_vocabulary
    from vlmops.models import VLM, GenerativeVLM, capabilities, load_model
    from vlmops.report.rules import check_rules, parse_rules
    from vlmops.store.cache import open_cache
    from vlmops.store.generate import DecodingParams

    rules = parse_rules(fail_on, GENERATIVE_HEADLINE)
    manifest, skipped = screen_images(resolve_data(data), data, skip=skip_unreadable)
    spec = "emoji" if data == "emoji" else "other"
    vocabulary = read_vocabulary(vocabulary_file) if vocabulary_file is not None else None
    task = build_generative_task(manifest, spec, task_name, split, prompt, cluster_by, vocabulary)
    model = load_model(model_uri)
    if not isinstance(model, GenerativeVLM):
        raise ModelLoadError(
            f"{model_uri} cannot generate text ({capabilities(model)}); --task {task_name} needs a "
            "generative model such as builtin:emoji-captioner, hf:DIR (LLaVA, Qwen2-VL, SmolVLM, BLIP) "
            "or openai:MODEL@URL"
        )
    judge = load_model(judge_uri) if judge_uri else None
    if judge is not None and not isinstance(judge, VLM):
        raise ModelLoadError(f"--judge {judge_uri} is not a dual encoder; use e.g. builtin:emoji-lit")
    params = DecodingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, logprobs=True)
    options = GenerativeOptions(
        params=params,
        slices=[f.strip() for f in slice_fields.split(",") if f.strip()] if slice_fields else None,
        min_n=min_n,
        seed=seed,
        dollars_per_hour=dollars_per_hour,
        price_in=price_in,
        price_out=price_out,
        batch_size=batch_size,
        suite=suite,
    )
    with open_cache(store) as cache, progress_bar(progress) as bar:
        job = bar.add_task(f"generating {task.n} answers", total=task.n)
        report = run_generative_eval(
            model, task, cache, options, judge, on_batch=lambda n: bar.update(job, advance=n)
        )
    report["data"] |= {"spec": data, "skipped_unreadable": skipped_summary(skipped)}
    results = check_rules(rules, report["headline"])
    report["fail_on"] = [r.to_dict() for r in results]
    write_json(report, json_out)
    if html is not None:
        from vlmops.report.generative_html import write_generative_html

        write_generative_html(report, html)
    _print_summary(report, GENERATIVE_HEADLINE)
    print_skipped(report["data"].get("skipped_unreadable"))
    print_rule_results(results)
    if any(r.fired for r in results):
        raise typer.Exit(EXIT_FAILED_CHECK)


def _print_summary(report: dict, headline: dict) -> None:
    from rich.table import Table

    data = report["data"]
    table = Table(
        title=f"{report['model']['uri']} on {data['spec']} [{data['split'] or 'all'}]: {report['task']}, "
        f"{data['n']} answers ({report['generation']['hits']} cached)"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("what")
    for name, value in report["headline"].items():
        if value is not None:
            table.add_row(name, f"{value:.4g}", headline[name][1])
    results_console.print(table)
    if "by_type" in report["reference"]:
        for kind, row in report["reference"]["by_type"].items():
            results_console.print(f"  {kind}: accuracy {row['accuracy']:.3f} (n={row['n']})")
    for skipped in ("confidence", "hallucination", "grounding", "robustness"):
        reason = report.get(skipped, {}).get("skipped")
        if reason:
            console.print(f"[dim]{skipped} skipped: {reason}[/]")
