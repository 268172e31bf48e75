"""Embedding cache benchmark: embed a data set into a fresh store (cold), then again (warm).

The baseline is the cold run, i.e. embedding everything with no cache; the warm run only hashes the
files and reads the stored vectors. Prints cold seconds, warm seconds and the cold/warm ratio.

    python bench/cache.py --model builtin:emoji-lit --data emoji
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-lit", help="model URI (default: %(default)s)")
    parser.add_argument(
        "--data", default="emoji", help="'emoji', an image folder or a manifest (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (default: 64)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N records")
    parser.add_argument("--texts", action="store_true", help="also embed the first text of each record")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Cold then warm pass over the data into a temporary store; returns the timings."""
    import numpy as np

    from vlmops.data.manifest import resolve_data
    from vlmops.models import load_model
    from vlmops.store.cache import EmbeddingCache
    from vlmops.store.embed import embed_images_cached, embed_texts_cached

    frame = resolve_data(args.data)
    if args.limit:
        frame = frame.head(args.limit)
    model = load_model(args.model)
    paths = list(frame["image"])
    texts = [t[0] for t in frame["texts"] if len(t)] if args.texts else []
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddingCache(Path(tmp) / "store.sqlite") as cache:
        for phase in ("cold", "warm"):
            start = time.perf_counter()
            images, stats = embed_images_cached(model, paths, cache, args.batch_size, not args.no_progress)
            if texts:
                embed_texts_cached(model, texts, cache, args.batch_size, not args.no_progress)
            timings[phase] = time.perf_counter() - start
            print(f"{phase}: {timings[phase]:.3f} s  (hits {stats.hits}, misses {stats.misses})")
            if phase == "cold":
                reference = images
        assert np.array_equal(reference, images), "warm vectors differ from cold ones"
    return {
        "model": args.model,
        "data": args.data,
        "n_images": len(paths),
        "n_texts": len(texts),
        "cold_s": round(timings["cold"], 4),
        "warm_s": round(timings["warm"], 4),
        "ratio": round(timings["cold"] / max(timings["warm"], 1e-9), 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the result."""
    args = parse_args(argv)
    result = run(args)
    print(f"cold {result['cold_s']:.3f} s, warm {result['warm_s']:.3f} s, cold/warm {result['ratio']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
