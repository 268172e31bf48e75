"""Recall@k and time of the audit's approximate neighbour search (faiss IVF) against the exact search.

Two sets: the emoji image embeddings (every record, from the embedding store; `builtin:emoji-lit`)
and a larger set made by augmenting them: each vector plus Gaussian noise (``--noise`` times a
random unit direction), renormalised, until ``--n`` rows. Queries are a seeded sample of the rows
(``--queries``), searched against all the others (a query's own row excluded, as the audit's
out-of-fold search never sees itself). Times: the exact search of the queries (``exact_s``), the
whole `top_k` through the index (``ivf_s``: build, search, exact similarities), and the index build
and the raw search apart. Prints one line per set and nprobe; writes ``--json`` if asked.

    python bench/ann_recall.py --n 100000 --queries 2000 --label-view
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-lit", help="model URI (default: %(default)s)")
    parser.add_argument("--n", type=int, default=100_000, help="rows of the augmented set (default: 100k)")
    parser.add_argument("--noise", type=float, default=0.3, help="norm of the added noise (default: 0.3)")
    parser.add_argument("--queries", type=int, default=2000, help="query rows per set (default: 2000)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument(
        "--nprobe", type=int, nargs="*", default=[0], help="IVF lists searched (0: the default, nlist / 32)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--label-view",
        action="store_true",
        help="also time the audit's k-NN label view (5 folds) on the augmented set, exact vs index",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def emoji_embeddings(model_uri: str) -> np.ndarray:
    """Image embeddings of every emoji record, through the default embedding store."""
    from vlmops.data.manifest import resolve_data
    from vlmops.models import load_model
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import embed_images_cached

    frame = resolve_data("emoji")
    with open_cache() as cache:
        return embed_images_cached(load_model(model_uri), list(frame["image"]), cache, progress=False)[0]


def augment(x: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    """`n` unit rows: copies of `x`'s rows (cycled) plus noise of norm `noise` in a random direction."""
    rng = np.random.default_rng(seed)
    base = x[np.arange(n) % len(x)]
    direction = rng.standard_normal(base.shape).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    out = base + noise * direction
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def measure(x: np.ndarray, queries: int, k: int, nprobe: int | None, seed: int) -> dict:
    """Exact and IVF top-k of sampled rows against all rows (self excluded): recall@k and seconds."""
    from vlmops.audit import neighbours
    from vlmops.audit.neighbours import _ivf_index, neighbour_options, top_k

    rows = np.sort(np.random.default_rng(seed).choice(len(x), min(queries, len(x)), replace=False))
    own = np.arange(len(x))
    exclude = (rows, own)  # a query never finds itself
    with neighbour_options(threshold=len(x)):
        start = time.perf_counter()
        truth = top_k(x[rows], x, k, exclude=exclude)[0]
        exact_s = time.perf_counter() - start
    with neighbour_options(threshold=0, nprobe=nprobe) as options:
        neighbours._TRAINED.clear()  # time the k-means too
        start = time.perf_counter()
        found = top_k(x[rows], x, k, exclude=exclude)[0]
        approx_s = time.perf_counter() - start
        nlist, probes = options.clusters(len(x))
        neighbours._TRAINED.clear()
        start = time.perf_counter()
        index = _ivf_index(x, options)  # again, to time the build and the search apart
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        index.search(x[rows], k + 1)
        search_s = time.perf_counter() - start
    hits = [len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]
    return {
        "n": len(x),
        "dim": x.shape[1],
        "queries": len(rows),
        "k": k,
        "nlist": nlist,
        "nprobe": probes,
        f"recall@{k}": round(float(np.mean(hits)), 4),
        "queries_below_0.8": int(np.sum(np.array(hits) < 0.8)),
        "exact_s": round(exact_s, 2),
        "ivf_s": round(approx_s, 2),
        "ivf_build_s": round(build_s, 2),
        "ivf_search_s": round(search_s, 2),
        "exact_ms_per_query": round(1000 * exact_s / len(rows), 2),
        "ivf_ms_per_query": round(1000 * search_s / len(rows), 3),
    }


def label_view(x: np.ndarray, labels: list[str]) -> dict:
    """The audit's out-of-fold k-NN label probabilities on `x`, exact and through the index: seconds,
    and how often the two agree on the most probable label and on the confident-learning flags."""
    from vlmops.audit.labels import confident_learning, out_of_sample_probs
    from vlmops.audit.neighbours import neighbour_options

    out = {"n": len(x)}
    probs = {}
    for name, threshold in (("exact", len(x)), ("ivf", 0)):
        with neighbour_options(threshold=threshold):
            start = time.perf_counter()
            probs[name], classes = out_of_sample_probs(x, labels)
            out[f"{name}_s"] = round(time.perf_counter() - start, 1)
    y = np.searchsorted(classes, labels)
    flags = {name: confident_learning(p, y)[0] for name, p in probs.items()}
    out["argmax_agreement"] = round(float(np.mean(probs["exact"].argmax(1) == probs["ivf"].argmax(1))), 4)
    out["flagged_exact"], out["flagged_ivf"] = int(flags["exact"].sum()), int(flags["ivf"].sum())
    out["flagged_both"] = int((flags["exact"] & flags["ivf"]).sum())
    out["max_abs_prob_diff"] = round(float(np.abs(probs["exact"] - probs["ivf"]).max()), 4)
    return out


def main(argv: list[str] | None = None) -> None:
    """Measure both sets and print the results."""
    args = parse_args(argv)
    emoji = emoji_embeddings(args.model)
    augmented = augment(emoji, args.n, args.noise, args.seed)
    results = []
    for name, x in (("emoji", emoji), (f"augmented {args.n}", augmented)):
        for nprobe in args.nprobe:
            result = {"set": name, **measure(x, args.queries, args.k, nprobe or None, args.seed)}
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.label_view:
        from vlmops.data.manifest import resolve_data

        names = [str(v) for v in resolve_data("emoji")["label"]]
        labels = [names[i % len(names)] for i in range(len(augmented))]  # each copy keeps its label
        result = {"set": f"label view, augmented {args.n}", **label_view(augmented, labels)}
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
