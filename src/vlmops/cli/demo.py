"""`vlmops demo`: the whole loop that exists today, end to end on the embedded defaults."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from vlmops.cli._common import JsonOption, console, handle_errors, write_json


@handle_errors
def demo(
    model: str = typer.Option("builtin:emoji-lit", "--model", "-m", help="Model URI to evaluate."),
    store: str | None = typer.Option(
        None, "--store", help="Embedding store URL or path (default under VLMOPS_HOME)."
    ),
    loop: bool = typer.Option(
        True,
        "--loop/--no-loop",
        help="Then run the closed loop: shift, detect, retrain, gate, canary, rollback.",
    ),
    generative: bool = typer.Option(
        True,
        "--generative/--no-generative",
        help="With the loop, also its generative act: builtin:emoji-captioner behind /v1/chat/completions.",
    ),
    workdir: Path | None = typer.Option(
        None, "--workdir", help="Folder for the loop (default: VLMOPS_HOME/demo/TIME)."
    ),
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """The embedded defaults end to end: data, the shipped model's quality bar, then the closed loop.

    The loop serves the model, replays google/twitter traffic and then facebook/openmoji and
    low-contrast images, detects the shift and the accuracy drop before labels, retrains from user
    feedback, gates the challenger, runs it as a canary, promotes it, and rolls back a broken one.
    Its generative act does the same with builtin:emoji-captioner answering chat requests: the
    OpenMoji shift is seen in grounding before any label, corrected answers retrain the decoder, a
    paired gate and a canary judged by people promote it, and a broken captioner is rolled back.
    It writes an HTML story report and prints where. Exit 1 when the quality bar fails or either act
    does not end with the retrained champion and the broken canary rolled back.
    """
    from vlmops.data.emoji import fetch_emoji, load_emoji_manifest
    from vlmops.evaluate.emoji_bar import quality_report
    from vlmops.models import load_model
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import embed_images_cached

    console.rule("[bold]vlmops demo")
    console.print("1/3 data: fetching the emoji data set (npm, cached after the first run)")
    fetch_emoji(progress=progress)
    manifest = load_emoji_manifest()
    console.print(f"    {len(manifest)} images from {manifest['vendor'].nunique()} vendors")
    console.print(f"2/3 model: loading {model}")
    vlm = load_model(model)
    console.print(f"    version {vlm.info.version}, {vlm.info.dim}-d embeddings")
    console.print("3/3 zero-shot evaluation (image embeddings cached in the store)")
    with open_cache(store) as cache:

        def embed_paths(paths):
            return embed_images_cached(vlm, list(paths), cache, progress=progress)[0]

        report = quality_report(vlm, manifest, embed_paths)
    table = Table(
        "slice", "images", "classes", "top-1", "top-5", title="zero-shot, prompt 'an emoji of {name}'"
    )
    for key, row in report.items():
        if key != "bars":
            table.add_row(
                key, str(row["n"]), str(row["n_classes"]), f"{row['top1']:.3f}", f"{row['top5']:.3f}"
            )
    console.print(table)
    failed = [k for k, bar in report["bars"].items() if not bar["passed"]]
    for key, bar in report["bars"].items():
        mark = "[green]pass[/]" if bar["passed"] else "[red]FAIL[/]"
        console.print(f"quality bar {key}: {bar['value']:.3f} >= {bar['threshold']} {mark}")
    payload = {"model": vlm.info.to_dict(), "report": report}
    if failed and model == "builtin:emoji-lit":
        write_json(payload, json_out)
        raise typer.Exit(1)
    if loop:
        payload["loop"] = _run_loop(workdir)
        reason = "the generative act was not run (vlmops demo --no-generative)"
        try:
            if generative:
                reason = "the generative act stopped with an error before it finished (see the console)"
                payload["generative"] = _run_generative(payload["loop"]["workdir"])
        finally:  # the loop's story is written even when the generative act fails
            _write_story(payload["loop"], payload.get("generative"), reason)
    write_json(payload, json_out)
    if loop and not payload["loop"]["succeeded"]:
        raise typer.Exit(1)
    if loop and generative and not payload["generative"]["succeeded"]:
        raise typer.Exit(1)


def _run_loop(workdir: Path | None) -> dict:
    import time

    from vlmops.config import get_settings
    from vlmops.demo import run_loop

    workdir = workdir or get_settings().home / "demo" / time.strftime("%Y%m%d-%H%M%S")
    console.rule("[bold]the closed loop")
    results = run_loop(workdir, say=lambda text: console.print(text, highlight=False))
    results["succeeded"] = bool(
        results["gate"]["passed"]
        and results["rollback"]["alerts"]
        and results["rollback"]["after"] == [results["champion"]]
    )
    results["workdir"] = str(workdir)
    console.print(f"the loop took {results['seconds']:.0f} s")
    return results


def _write_story(results: dict, generative: dict | None, reason: str) -> None:
    """The HTML story of the loop and of the generative act (or why it did not run); its path in `results`."""
    from vlmops.demo import write_story

    workdir = Path(results["workdir"])
    story = write_story(results, str(workdir / "store.sqlite"), workdir / "story.html", generative, reason)
    results["story"] = str(story)
    console.print(f"story report: [bold]{story}[/]")


def _run_generative(workdir: str) -> dict:
    from vlmops.demo.generative import run_generative_act

    console.rule("[bold]the generative act")
    results = run_generative_act(
        Path(workdir) / "generative", say=lambda t: console.print(t, highlight=False)
    )
    results["succeeded"] = generative_act_succeeded(results)
    return results


def generative_act_succeeded(results: dict) -> bool:
    """Shift seen before labels, gate passed, challenger promoted, broken canary rolled back."""
    rollback = results["rollback"]
    return bool(
        results["phases"][0]["drifted"]
        and results["gate"]["passed"]
        and results["champion"] == results["retrain"]["version"]
        and rollback["check"]["worse"]
        and rollback["after"] == [results["champion"]]
    )
