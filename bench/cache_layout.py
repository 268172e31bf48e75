"""The embedding store's table layout: a rowid table (now) against the WITHOUT ROWID table that stores
made before it have, on the same vectors, side by side.

Each round writes `--n` random float32 vectors of `--dim` into a fresh file store of each layout through
`EmbeddingCache.put_many`, in chunks of `--chunk` (as a Ray job's results or the local batches arrive),
then reads them all back with `get_many` (a warm run's lookup); layouts alternate within a round. The
older layout is made by creating its table before `EmbeddingCache` opens the file (it keeps a table it
finds). Prints seconds per layout (median over rounds) and the ratios.

    python bench/cache_layout.py                  # 15,000 vectors of 384 (the emoji set's size)
    python bench/cache_layout.py --n 100000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from vlmops.store.cache import WITHOUT_ROWID_EMBEDDINGS, EmbeddingCache


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=15_000, help="vectors (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=384, help="their dimension (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=512, help="vectors per put_many (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def open_store(path: Path, layout: str) -> EmbeddingCache:
    """A fresh store at `path` with the `layout` ('rowid' or 'without-rowid') embeddings table."""
    if layout == "without-rowid":
        with sqlite3.connect(path) as conn:
            conn.execute(WITHOUT_ROWID_EMBEDDINGS)
    return EmbeddingCache(path)


def one_run(folder: Path, layout: str, items: dict[str, np.ndarray], chunk: int) -> tuple[float, float]:
    """Seconds to write `items` in chunks and to read them all back, into a fresh store."""
    cache = open_store(folder / f"{layout}.db", layout)
    keys = list(items)
    start = time.perf_counter()
    for i in range(0, len(keys), chunk):
        cache.put_many("model", "transform", {key: items[key] for key in keys[i : i + chunk]})
    write = time.perf_counter() - start
    start = time.perf_counter()
    found = cache.get_many("model", "transform", keys)
    read = time.perf_counter() - start
    if len(found) != len(keys) or not np.array_equal(found[keys[-1]], items[keys[-1]]):
        raise SystemExit(f"{layout}: the store gave back other vectors than were written")
    return write, read


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    vectors = np.random.default_rng(0).standard_normal((args.n, args.dim)).astype(np.float32)
    items = {hashlib.sha256(str(i).encode()).hexdigest(): vectors[i] for i in range(args.n)}
    seconds: dict[str, dict[str, list[float]]] = {
        layout: {"write": [], "read": []} for layout in ("without-rowid", "rowid")
    }
    for round_ in range(args.rounds):
        layouts = list(seconds) if round_ % 2 == 0 else list(reversed(seconds))
        for layout in layouts:
            with tempfile.TemporaryDirectory() as tmp:
                write, read = one_run(Path(tmp), layout, items, args.chunk)
            seconds[layout]["write"].append(write)
            seconds[layout]["read"].append(read)
            print(f"round {round_ + 1} {layout:13s} write {write:.3f} s  read {read:.3f} s", flush=True)
    median = {layout: {op: statistics.median(v) for op, v in ops.items()} for layout, ops in seconds.items()}
    ratios = {op: median["without-rowid"][op] / median["rowid"][op] for op in ("write", "read")}
    print(f"\n{args.n} vectors of {args.dim}, chunks of {args.chunk}, file stores, median of {args.rounds}")
    for layout, ops in median.items():
        print(f"| {layout} | write {ops['write']:.3f} s | read {ops['read']:.3f} s |")
    print(f"without-rowid / rowid: write {ratios['write']:.2f}x, read {ratios['read']:.2f}x")
    result = {"n": args.n, "dim": args.dim, "chunk": args.chunk, "seconds": seconds, "median": median}
    result["ratios"] = ratios
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
