"""`vlmops export`: write a model as an ONNX bundle (fp32 or int8) behind an accuracy gate."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmops.cli._common import (
    EXIT_FAILED_CHECK,
    JsonOption,
    console,
    handle_errors,
    results_console,
    write_json,
)

FORMATS = ("onnx",)


@handle_errors
def export(
    model: str = typer.Option(
        "builtin:emoji-lit",
        "--model",
        "-m",
        help="Model URI to export: builtin:emoji-lit or builtin:emoji-lit@FOLDER (from `vlmops train`).",
    ),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Export format; only 'onnx' for now."),
    int8: bool = typer.Option(
        False,
        "--int8/--fp32",
        help="int8: static QDQ quantization of the image tower's convolutions, calibrated on --data "
        "(the text tower stays fp32). fp32: a plain export, equal to the source up to float rounding.",
    ),
    int8_text: bool = typer.Option(
        False,
        "--int8-text",
        help="With --int8, also quantize the text tower (dynamic int8 MatMuls): smaller and faster text "
        "encoding, but it cost 1-2.5 pp zero-shot top-1 on emoji and a text's vector then depends "
        "slightly on the other texts in its batch.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Bundle folder to create; must not exist or be empty. Load it as onnx:DIR."
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Labelled data for calibration and the gate: 'emoji', an image folder or a manifest. "
        "Required with --int8; without it an fp32 export is only checked on a few synthetic images.",
    ),
    calibration_split: str = typer.Option(
        "train",
        "--calibration-split",
        help="Split whose images calibrate int8 activation ranges; 'all' = every row (data without splits).",
    ),
    calibration_size: int = typer.Option(
        256, "--calibration-size", min=1, help="Calibration images, drawn at random (--seed)."
    ),
    gate_split: str = typer.Option(
        "val",
        "--gate-split",
        help="Split the gate measures on: image-vector cosine to the source and zero-shot top-1 of both, "
        "at the finest label tier (emoji: concept). 'all' = every row (data without splits).",
    ),
    max_drop: float = typer.Option(
        0.01,
        "--max-drop",
        min=0.0,
        max=1.0,
        help="Largest allowed zero-shot top-1 drop, as a fraction (0.01 = 1 percentage point).",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Write the bundle even when the gate fails; bundle.json then records gate.passed=false, "
        "forced=true.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing the calibration images."),
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Export a model as an ONNX bundle that runs with ONNX Runtime and no torch, checked by an accuracy gate.

    The bundle folder holds image.onnx, text.onnx, the tokenizer files and bundle.json (versions,
    quantization, the gate's numbers). Its model version is the source's plus '+onnx' or '+onnx-int8'.

    With --data the gate compares the export with its source on --gate-split; when the zero-shot top-1
    drops by more than --max-drop the export is refused and nothing is written to --out.

    Exit codes: 0 written, 1 refused by the gate, 2 bad input (message says what to fix).
    """
    from vlmops.data.manifest import resolve_data
    from vlmops.evaluate.task import build_task
    from vlmops.export.gate import run_gate, sample_images
    from vlmops.models import load_model
    from vlmops.models.onnx_export import GateFailed, Int8Recipe, export_bundle, exportable_tower

    _check_inputs(fmt, out, int8, int8_text, data)
    frame = None if data is None else resolve_data(data)
    if frame is not None:
        _check_splits(frame, data, int8, gate_split, calibration_split)
    source = load_model(model)
    exportable_tower(source)
    images, check = None, None
    if frame is not None:
        kind = "emoji" if data == "emoji" else "other"
        task = build_task(frame, kind, gate_split, split_option="--gate-split")
        if int8:
            images = sample_images(frame, calibration_split, calibration_size, seed)

        def check(exported):
            return run_gate(source, exported, task, max_drop, progress=progress).to_dict()

    try:
        recipe = Int8Recipe(text=int8_text)
        meta = export_bundle(
            source, out, int8, images, recipe=recipe, check=check, force=force, progress=progress
        )
    except GateFailed as exc:
        console.print(
            f"[bold red]gate failed:[/] {_gate_line(exc.gate)}; nothing written to {out}", highlight=False
        )
        console.print("export fp32 instead, or pass --force to write it anyway", highlight=False)
        write_json({"written": False, "out": str(out), "gate": exc.gate}, json_out)
        raise typer.Exit(EXIT_FAILED_CHECK) from None
    _print_summary(meta, out)
    write_json({"written": True, "out": str(out), **meta}, json_out)


def _check_inputs(fmt: str, out: Path, int8: bool, int8_text: bool, data: str | None) -> None:
    """Fail before any work on what can be checked without loading anything."""
    from vlmops.errors import DataError

    if fmt not in FORMATS:
        raise DataError(f"unknown --format {fmt!r}; supported: {', '.join(FORMATS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} already exists and is not empty; choose a new folder or delete it")
    if int8_text and not int8:
        raise DataError("--int8-text quantizes the text tower of an int8 export: add --int8, or drop it")
    if int8 and data is None:
        raise DataError("--int8 needs --data (e.g. --data emoji) to calibrate activations and run the gate")


def _check_splits(frame, data: str, int8: bool, gate_split: str, calibration_split: str) -> None:
    """Data without a split column: name the export options that make it usable (before loading)."""
    from vlmops.errors import DataError

    if "split" in frame.columns and frame["split"].notna().any():
        return  # a split that is not there is reported with the splits that are
    wanted = {"--gate-split": gate_split}
    if int8:
        wanted["--calibration-split"] = calibration_split
    missing = {option: split for option, split in wanted.items() if split != "all"}
    if missing:
        asked = ", ".join(f"{option} {split}" for option, split in missing.items())
        fix = " and ".join(f"{option} all" for option in missing)
        raise DataError(
            f"{data} has no splits (no 'split' column) but the export asks for {asked}: pass {fix} "
            "(calibration and gate then share images, so the gate is optimistic), or add a 'split' "
            "column (e.g. train/val) to the data"
        )


def _gate_line(gate: dict) -> str:
    return (
        f"zero-shot top-1 {gate['reference_top1']:.4f} (source) -> {gate['export_top1']:.4f} (export), "
        f"drop {100 * gate['drop']:.2f} pp vs allowed {100 * gate['max_drop']:.2f} pp; image cosine "
        f"mean {gate['mean_cosine']:.4f}, min {gate['min_cosine']:.4f} on {gate['n']} images "
        f"({gate['split'] or 'all'} split)"
    )


def _print_summary(meta: dict, out: Path) -> None:
    """What was written, the parity check and the gate."""
    from rich.table import Table

    table = Table(title=f"exported {meta['source']['uri']} as {meta['version']}")
    table.add_column("check")
    table.add_column("result")
    parity = meta["parity"]
    table.add_row(
        f"parity ({parity['n_images']} images, {parity['n_texts']} texts)",
        f"image min cosine {parity['image_min_cosine']:.5f}, text min cosine {parity['text_min_cosine']:.5f}",
    )
    gate = meta.get("gate")
    if gate is None:
        table.add_row("gate", "not run (no --data)")
    else:
        verdict = "[green]passed[/]" if gate["passed"] else "[bold yellow]FAILED, forced[/]"
        table.add_row("gate", f"{verdict}: {_gate_line(gate)}")
    results_console.print(table)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    results_console.print(f"wrote {out} ({size:.1f} MB); load it as onnx:{out}", highlight=False)
