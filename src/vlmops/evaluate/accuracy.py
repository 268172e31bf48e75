"""The accuracy section of `vlmops eval`: tiered zero-shot accuracy and two-way retrieval.

Retrieval uses one text per class (its averaged prompt embedding): image->text asks "is the image's
class among the K nearest class prompts", text->image asks "is an image of the class among the K
nearest images".
"""

from __future__ import annotations

import numpy as np

from vlmops.evaluate.context import EvalContext
from vlmops.evaluate.retrieval import retrieval_metrics
from vlmops.evaluate.tiers import tiered_accuracy


def top1_correct(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-item 0/1 float: is the highest-scoring class the true one (ties: lowest class index)."""
    return (np.argmax(logits, axis=1) == targets).astype(np.float64)


def accuracy_section(ctx: EvalContext) -> dict:
    """Top-1/top-5/mean per-class recall at every tier (hierarchical credit) and retrieval R@1/5/10."""
    task = ctx.task
    logits = ctx.logits(ctx.image_emb)
    tiers = tiered_accuracy(logits, task.classes, task.labels, ks=(1, 5), tier_names=task.tier_names)
    retrieval = retrieval_metrics(ctx.image_emb, ctx.class_emb, task.targets, ks=(1, 5, 10))
    return {
        "tiers": [t.to_dict() for t in tiers],
        "retrieval": retrieval.to_dict(),
    }
