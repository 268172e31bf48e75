"""`vlmops embed`: embed a data set through the embedding cache and write the vectors to Parquet."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from vlmops.cli._common import JsonOption, handle_errors, print_skipped, results_console, write_json
from vlmops.cli._ray import RayActorsOption, RayCpusOption, RayOption, ray_embedding
from vlmops.models import load_model


@handle_errors
def embed(
    model: str = typer.Option(
        ..., "--model", "-m", help="Model URI, e.g. builtin:emoji-lit, hf:/models/clip, open_clip:ARCH@CKPT."
    ),
    data: str = typer.Option(
        ...,
        "--data",
        "-d",
        help="'emoji', an image folder (class/xxx.png) or a manifest file (.jsonl, .csv, .parquet).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Parquet file to write (parent folders are created)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Inputs per model call."),
    store: str | None = typer.Option(
        None,
        "--store",
        help="Embedding store: sqlite:///path or a file path. Default: VLMOPS_STORE_URL, "
        "else store.sqlite under VLMOPS_HOME.",
    ),
    skip_unreadable: bool = typer.Option(
        False,
        "--skip-unreadable",
        help="Leave out rows whose image cannot be read (listed in the output and --json) instead of "
        "stopping with the list of them.",
    ),
    ray: str | None = RayOption,
    ray_actors: int = RayActorsOption,
    ray_cpus_per_actor: float = RayCpusOption,
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Embed every image of a data set, and the first text of each record, reusing cached vectors.

    Only images and texts not yet in the store for this model version are run through the model.

    Output: one Parquet row per record with id, model_version, image_embedding and text_embedding.

    text_embedding is present when any record has a text, and null for records without one.

    Every image's header is checked before any embedding: unreadable images are listed together with
    their row numbers (exit 2), or left out with --skip-unreadable.

    With --ray the images not yet in the store are embedded by a Ray Data actor pool (same vectors).
    """
    from vlmops.data.manifest import resolve_data
    from vlmops.data.screen import screen_images, skipped_summary
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import embed_images_cached, embed_texts_cached

    start = time.perf_counter()
    frame, skipped = screen_images(resolve_data(data), data, skip=skip_unreadable)
    vlm = load_model(model)
    with open_cache(store) as cache:
        with ray_embedding(ray, ray_actors, ray_cpus_per_actor):
            images, image_stats = embed_images_cached(vlm, list(frame["image"]), cache, batch_size, progress)
        first_texts = [texts[0] if len(texts) else None for texts in frame["texts"]]
        with_text = [i for i, text in enumerate(first_texts) if text is not None]
        text_vectors, text_stats = None, None
        if with_text:
            text_vectors, text_stats = embed_texts_cached(
                vlm, [first_texts[i] for i in with_text], cache, batch_size, progress
            )
    _write_parquet(out, list(frame["id"]), vlm.info.version, images, text_vectors, with_text)
    seconds = time.perf_counter() - start
    summary = {
        "n": len(frame),
        "model": vlm.info.to_dict(),
        "model_version": vlm.info.version,
        "data": data,
        "out": str(out),
        "images": image_stats.to_dict(),
        "texts": text_stats.to_dict() if text_stats else None,
        "skipped_unreadable": skipped_summary(skipped),
        "seconds": round(seconds, 3),
    }
    _print_summary(summary)
    write_json(summary, json_out)


def _write_parquet(
    out: Path,
    ids: list[str],
    version: str,
    images: np.ndarray,
    texts: np.ndarray | None,
    with_text: list[int],
) -> None:
    """One row per record; list<float32> columns; written to a temp file then renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def vector_column(vectors: np.ndarray, rows: list[int]) -> pa.Array:
        n, dim = len(ids), vectors.shape[1]
        present = np.zeros(n, dtype=bool)
        present[rows] = True
        offsets = np.concatenate([[0], np.cumsum(np.where(present, dim, 0))]).astype(np.int32)
        values = pa.array(vectors.reshape(-1), type=pa.float32())
        return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~present))

    columns = {
        "id": pa.array(ids, type=pa.string()),
        "model_version": pa.array([version] * len(ids), type=pa.string()),
        "image_embedding": vector_column(images, list(range(len(ids)))),
    }
    if texts is not None:
        columns["text_embedding"] = vector_column(texts, with_text)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    pq.write_table(pa.table(columns), partial)
    partial.replace(out)


def _print_summary(summary: dict) -> None:
    """Rich table: records, hits and misses per modality, time, output path."""
    from rich.table import Table

    table = Table(title=f"embedded {summary['n']} records with {summary['model_version']}")
    for name in ("", "n", "unique", "hits", "misses", "seconds"):
        table.add_column(name, justify="right" if name else "left")
    for kind in ("images", "texts"):
        stats = summary[kind]
        if stats:
            row = [str(stats[k]) for k in ("n", "unique", "hits", "misses")]
            table.add_row(kind, *row, f"{stats['seconds']:.2f}")
    results_console.print(table)
    print_skipped(summary["skipped_unreadable"])
    results_console.print(f"total {summary['seconds']:.2f} s -> {summary['out']}", highlight=False)
