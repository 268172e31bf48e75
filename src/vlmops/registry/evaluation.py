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
