"""`vlmops train`: reproduce the built-in emoji-lit model from the emoji data set."""

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
        help="Folder for the weights and model card (default: VLMOPS_HOME/models/emoji-lit).",
    ),
    epochs: int = typer.Option(55, min=1, help="Maximum epochs (early stopping on val may end sooner)."),
    seed: int = typer.Option(0, help="Seed for initialisation, sampling and augmentation."),
    max_minutes: float = typer.Option(14.5, help="Stop after the epoch that passes this wall-clock budget."),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="Run the quality bar afterwards."),
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train the image tower of builtin:emoji-lit (frozen MiniLM text tower) on google+twitter emoji.

    Writes emoji-lit.safetensors and the model card emoji-lit.json (data version, hyper-parameters,
    history, quality metrics, licences). Load the result with `builtin:emoji-lit@FOLDER`.
    """
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
