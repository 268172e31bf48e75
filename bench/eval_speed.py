"""Eval speed: `vlmops eval --suite standard` (cold store, then warm) vs a naive loop.

The naive baseline is what a hand-written harness does: for every image the standard suite looks at
(the clean split, each corruption x severity of the corruption sample, the typographic variants, the
privacy audit's images) decode it, build the variant and embed it alone, with no batching and no cache.
It does only the embedding work, none of the metrics, so the ratio understates our advantage a little.
Adversarial attacks are excluded from the baseline (they are batched gradient work either way).

    python bench/eval_speed.py                 # emoji test split, builtin:emoji-lit
    python bench/eval_speed.py --baseline-limit 2000   # time the baseline on a subset, extrapolate
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-lit", help="model URI (default: %(default)s)")
    parser.add_argument(
        "--baseline-limit",
        type=int,
        default=None,
        help="embed only this many of the baseline's images and extrapolate linearly (default: all)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser.parse_args(argv)


def run_suite(model, manifest, store: Path, progress: bool) -> tuple[float, object]:
    """One `run_eval` of the standard suite on the emoji test split; returns (seconds, ctx)."""
    from vlmops.evaluate.context import EvalContext
    from vlmops.evaluate.suite import EvalOptions, run_eval
    from vlmops.evaluate.task import build_task
    from vlmops.store.cache import EmbeddingCache

    start = time.perf_counter()
    task = build_task(manifest, "emoji")
    with EmbeddingCache(store) as cache:
        ctx = EvalContext(model, task, cache, progress=progress)
        run_eval(ctx, EvalOptions(suite="standard"), {"spec": "emoji"}, manifest)
    return time.perf_counter() - start, ctx


def baseline_jobs(ctx, manifest) -> list[tuple[str, object]]:
    """(image path, variant builder) for every image embedding the standard suite needs."""
    from vlmops.evaluate.corruptions import FAMILIES, corrupt
    from vlmops.evaluate.privacy import training_membership
    from vlmops.evaluate.suite import SUITES
    from vlmops.evaluate.typographic import write_label, wrong_targets

    suite, task = SUITES["standard"], ctx.task
    paths = list(task.frame["image"])
    jobs: list[tuple[str, object]] = [(p, None) for p in paths]
    for i in ctx.sample(suite.corruption_sample, "corruptions"):
        for family in FAMILIES:
            for severity in (1, 2, 3, 4, 5):
                jobs.append((paths[i], lambda im, f=family, s=severity: corrupt(im, f, s, 0)))
    rows = ctx.sample(suite.typographic_sample, "typographic")
    written = wrong_targets(task.targets[rows], len(task.classes), 0)
    for i, w in zip(rows, written, strict=True):
        jobs.append((paths[i], lambda im, t=task.class_names[w]: write_label(im, t)))
    members = training_membership(ctx.model.card, manifest)
    if not isinstance(members, str):
        jobs += [(p, None) for p in members[0]["image"][: suite.privacy_members + 2000]]
    return jobs


def run_baseline(model, jobs: list, limit: int | None) -> float:
    """Seconds to decode, transform and embed each job alone (extrapolated when `limit` is set)."""
    from vlmops.data.images import load_image

    subset = jobs if limit is None else jobs[:: max(1, len(jobs) // limit)][:limit]
    start = time.perf_counter()
    for path, make in subset:
        image = load_image(path)
        model.embed_images([make(image) if make else image])
    return (time.perf_counter() - start) * len(jobs) / len(subset)


def main(argv: list[str] | None = None) -> None:
    """Run ours cold, ours warm and the baseline; print seconds and ratios."""
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.models import load_model

    args = parse_args(argv)
    manifest = load_emoji_manifest()
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.sqlite"
        cold, ctx = run_suite(model, manifest, store, not args.no_progress)
        print(f"ours, cold store: {cold:.1f} s (cache {ctx.cache_totals()})")
        warm, ctx = run_suite(model, manifest, store, not args.no_progress)
        print(f"ours, warm store: {warm:.1f} s (cache {ctx.cache_totals()})")
    jobs = baseline_jobs(ctx, manifest)
    naive = run_baseline(model, jobs, args.baseline_limit)
    how = "" if args.baseline_limit is None else f", extrapolated from {args.baseline_limit}"
    print(f"naive loop: {naive:.1f} s for {len(jobs)} single-image embeddings{how}")
    print(f"naive/ours cold {naive / cold:.1f}x, naive/ours warm {naive / warm:.1f}x")


if __name__ == "__main__":
    main()
