"""`vlmops train`: reproduce a built-in model from the emoji data set (emoji-lit, or emoji-captioner with
`--task caption`)."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmops.cli._common import JsonOption, handle_errors, results_console, write_json
from vlmops.progress import progress_bar


@handle_errors
def train(
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for the weights and model card (default: VLMOPS_HOME/models/<model name>).",
    ),
    task: str = typer.Option(
        "embed",
        "--task",
        help="embed: the dual encoder emoji-lit; caption: the generative emoji-captioner.",
    ),
    epochs: int = typer.Option(
        None, min=1, help="Maximum epochs (default 55 for embed, with early stopping on val; 8 for caption)."
    ),
    seed: int = typer.Option(0, help="Seed for initialisation, sampling and augmentation."),
    max_minutes: float = typer.Option(
        None, help="Stop after the epoch that passes this wall-clock budget (default 14.5 embed, 13 caption)."
    ),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Run the quality bar afterwards."),
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train the image tower of builtin:emoji-lit (frozen MiniLM text tower) on google+twitter emoji, or
    with `--task caption` the decoder of builtin:emoji-captioner on emoji-lit's frozen tower.

    Writes the weights and the model card (data version, hyper-parameters, history, quality metrics,
    licences). Load the result with `builtin:emoji-lit@FOLDER` or `builtin:emoji-captioner@FOLDER`.
    """
    if task not in ("embed", "caption"):
        raise typer.BadParameter(f"unknown task {task!r}; use embed or caption", param_hint="--task")
    if task == "caption":
        _train_captioner(
            out, epochs or 8, seed, 13.0 if max_minutes is None else max_minutes, json_out, progress
        )
        return
    epochs, max_minutes = epochs or 55, 14.5 if max_minutes is None else max_minutes
    from vlmops.config import get_settings
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.evaluate.emoji_bar import quality_report
    from vlmops.models.builtin import save_emoji_lit
    from vlmops.models.towers import TextTower
    from vlmops.models.training import TrainConfig, train_emoji_lit

    out = out or get_settings().home / "models" / "emoji-lit"
    manifest = load_emoji_manifest()
    config = TrainConfig(epochs=epochs, seed=seed, max_minutes=max_minutes)
    with progress_bar(progress) as bar:
        task = bar.add_task("training emoji-lit", total=epochs)

        def on_epoch(record: dict) -> None:
            bar.update(
                task, advance=1, description=f"epoch {record['epoch']} val top-1 {record['val_top1']:.3f}"
            )

        text_tower = TextTower()
        result = train_emoji_lit(manifest, config, text_tower, on_epoch=on_epoch)
    card = save_emoji_lit(
        result, config, manifest, out, evaluate=evaluate, text_tower=text_tower, quality=quality_report
    )
    results_console.print(
        f"best epoch {result.best_epoch}: val top-1 {result.best_val_top1:.3f} "
        f"in {result.seconds / 60:.1f} min; wrote {out}"
    )
    for key, bar_result in card.get("quality", {}).get("bars", {}).items():
        mark = "[green]pass[/]" if bar_result["passed"] else "[red]FAIL[/]"
        results_console.print(f"  {key}: {bar_result['value']:.3f} (bar {bar_result['threshold']}) {mark}")
    write_json(card, json_out)


def _train_captioner(out: Path | None, epochs: int, seed: int, max_minutes: float, json_out, progress: bool):
    from vlmops.config import get_settings
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.models.caption_training import CaptionTrainConfig, caption_card, train_captioner
    from vlmops.models.captioner import save_captioner

    out = out or get_settings().home / "models" / "emoji-captioner"
    manifest = load_emoji_manifest()
    config = CaptionTrainConfig(epochs=epochs, seed=seed, max_minutes=max_minutes)
    with progress_bar(progress) as bar:
        task = bar.add_task("training emoji-captioner", total=None)

        def on_progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        result, tower_sha256 = train_captioner(manifest, config=config, on_progress=on_progress)
    card = save_captioner(
        result.decoder, result.tokenizer, caption_card(result, config, manifest, tower_sha256), out
    )
    last = result.history[-1]
    results_console.print(
        f"{len(result.history)} epochs in {result.seconds / 60:.1f} min: "
        f"train loss {last['train_loss']:.3f}, val loss {last['val_loss']:.3f}; "
        f"wrote {out} (load it as builtin:emoji-captioner@{out})"
    )
    write_json(card, json_out)
