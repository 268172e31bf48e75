"""The evaluation a promotion decision needs: a quick-suite eval report of one model on one task.

Shared by `vlmops retrain` (challenger vs its parent) and the demo, so both gate on the same numbers
`vlmops eval --suite quick` would write (with per-item outcomes for the paired test).
"""

from __future__ import annotations

from collections.abc import Sequence

from vlmops.evaluate.task import EvalTask
from vlmops.models.base import VLM


def eval_report(
    model: VLM, task: EvalTask, slices: Sequence[str] | None = None, cache_url: str | None = None
) -> dict:
    """`run_eval` with the quick suite; embeddings go through the (SQLite) embedding cache.

    The report's ``data.dataset_version`` is the content version of the evaluated rows, as `vlmops
    eval` records it, so a registered report names the data it measured.
    """
    from vlmops.data.version import dataset_version
    from vlmops.evaluate.context import EvalContext
    from vlmops.evaluate.suite import EvalOptions, run_eval
    from vlmops.store.cache import open_cache

    with open_cache(cache_url) as cache:
        ctx = EvalContext(model, task, cache, progress=False)
        options = EvalOptions(suite="quick", slices=list(slices) if slices is not None else None)
        data_meta = {
            "spec": "gate",
            "dataset_version": dataset_version(task.frame.assign(sha256=ctx.content_keys)),
        }
        return run_eval(ctx, options, data_meta).to_dict()


def generative_report(model, task, cache_url: str | None = None, seed: int = 0) -> dict:
    """`run_generative_eval` without robustness parts or judge (greedy decoding, answers cached): the
    vlmops.geneval/1 report with the per-item scores the generative gate pairs."""
    from vlmops.data.version import dataset_version
    from vlmops.evaluate.generative import GenerativeOptions
    from vlmops.evaluate.generative_suite import run_generative_eval
    from vlmops.store.cache import open_cache

    with open_cache(cache_url) as cache:
        report = run_generative_eval(model, task, cache, GenerativeOptions(suite="quick", seed=seed))
    frame = task.frame
    if {"id", "sha256"} <= set(frame.columns) and frame["sha256"].notna().all():
        report["data"]["dataset_version"] = dataset_version(frame)
    return report


def captioner_gate_tasks(manifest, split: str | None, sample: int, seed: int = 0) -> dict:
    """The held-out sets a captioner is gated on: captions and the VQA questions of the same `sample`
    images (seeded) of `split` of the emoji data (`data.questions`)."""
    from vlmops.evaluate.generative import build_generative_task
    from vlmops.evaluate.task import select_split

    rows, _ = select_split(manifest, split)
    if sample and len(rows) > sample:
        rows = rows.sample(sample, random_state=seed)
    return {task: build_generative_task(rows, "emoji", task, split="all") for task in ("caption", "vqa")}
