"""Tiered (hierarchical) accuracy for labels shaped `category/subcategory/concept`.

Labels are `/`-separated paths of a common depth d >= 1. Classification happens at the leaf (one score per
leaf class); every coarser tier t < d is scored from the same ranking by comparing depth-t prefixes, so a
wrong concept in the right subcategory still counts at the subcategory tier ("hierarchical credit").
Ties between equal scores are broken by class index (lower index ranks first; a stable sort).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TierResult", "tiered_accuracy", "tiers_of", "truncate"]

SEP = "/"


def truncate(label: str, depth: int) -> str:
    """The first `depth` `/`-separated parts of `label` (the whole label when it is shallower)."""
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    return SEP.join(label.split(SEP)[: int(depth)])


def _depth(label: str) -> int:
    parts = label.split(SEP)
    if any(not p for p in parts):
        raise ValueError(
            f"label {label!r} has an empty part: write labels as 'category/subcategory/concept' "
            "without leading, trailing or doubled '/'"
        )
    return len(parts)


def tiers_of(labels: Sequence[str]) -> int:
    """The depth shared by all `labels`; ValueError naming a label of a different depth."""
    if len(labels) == 0:
        raise ValueError("tiers_of needs at least one label")
    depth = _depth(labels[0])
    for label in labels[1:]:
        other = _depth(label)
        if other != depth:
            raise ValueError(
                f"label {label!r} has {other} tiers but {labels[0]!r} has {depth}: give every label the "
                "same number of '/'-separated parts (pad shallow ones, e.g. 'animal/other/cat')"
            )
    return depth


@dataclass(frozen=True)
class TierResult:
    """Accuracy at one tier of the label hierarchy (depth 1 = coarsest)."""

    tier: str
    depth: int
    n: int
    n_classes: int
    top1: float
    topk: dict[int, float] = field(default_factory=dict)
    mean_per_class_recall: float = float("nan")

    @property
    def top5(self) -> float | None:
        """Top-5 accuracy at this tier, or None when 5 was not among the requested ks."""
        return self.topk.get(5)

    def to_dict(self) -> dict:
        """JSON-ready summary with one `top{k}` key per requested k."""
        out: dict = {"tier": self.tier, "depth": self.depth, "n": self.n, "n_classes": self.n_classes}
        out["top1"] = self.top1
        out.update({f"top{k}": v for k, v in sorted(self.topk.items())})
        out["mean_per_class_recall"] = self.mean_per_class_recall
        return out


def _check_inputs(
    scores: np.ndarray, class_labels: Sequence[str], true_labels: Sequence[str], ks: Sequence[int]
) -> tuple[np.ndarray, int]:
    scores = np.asarray(scores, dtype=np.float64)
    n, c = len(true_labels), len(class_labels)
    if scores.ndim != 2 or scores.shape != (n, c):
        raise ValueError(
            f"scores must have shape (n_images, n_classes) = ({n}, {c}) to match true_labels and "
            f"class_labels, got {scores.shape}"
        )
    if n == 0:
        raise ValueError("tiered_accuracy needs at least one image")
    if not np.all(np.isfinite(scores)):
        raise ValueError(
            f"scores contain {int((~np.isfinite(scores)).sum())} NaN/inf values: drop those rows"
        )
    if len(set(class_labels)) != c:
        dupes = sorted({x for x in class_labels if list(class_labels).count(x) > 1})
        raise ValueError(f"class_labels must be unique, duplicated: {dupes[:5]}")
    known = set(class_labels)
    missing = sorted({t for t in true_labels if t not in known})
    if missing:
        raise ValueError(
            f"{len(missing)} true labels not among class_labels, e.g. {missing[:5]}: add them to the "
            "candidate classes or drop those images"
        )
    bad_k = [k for k in ks if int(k) != k or k < 1]
    if bad_k or not ks:
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {tuple(ks)}")
    return scores, tiers_of(list(class_labels))


def _codes(prefixes: list[str], vocab: dict[str, int]) -> np.ndarray:
    return np.array([vocab.setdefault(p, len(vocab)) for p in prefixes], dtype=np.int64)


def tiered_accuracy(
    scores: np.ndarray,
    class_labels: Sequence[str],
    true_labels: Sequence[str],
    ks: Sequence[int] = (1, 5),
    tier_names: Sequence[str] | None = None,
) -> list[TierResult]:
    """Top-1, top-k and mean per-class recall at every tier, leaf first, from leaf-class `scores` (n, c)."""
    scores, depth = _check_inputs(scores, class_labels, true_labels, ks)
    if tier_names is not None and len(tier_names) != depth:
        raise ValueError(
            f"tier_names has {len(tier_names)} names but labels have {depth} tiers: "
            "give one name per tier, coarsest first, e.g. ('category', 'subcategory', 'concept')"
        )
    names = list(tier_names) if tier_names is not None else [f"depth{t}" for t in range(1, depth + 1)]
    n, c = scores.shape
    k_max = min(max(int(k) for k in ks), c)
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k_max]
    results = []
    for t in range(depth, 0, -1):
        vocab: dict[str, int] = {}
        class_code = _codes([truncate(x, t) for x in class_labels], vocab)
        true_code = _codes([truncate(x, t) for x in true_labels], vocab)
        hit = class_code[ranked] == true_code[:, None]  # (n, k_max)
        first_hit = np.where(hit.any(axis=1), hit.argmax(axis=1), k_max)  # 0-based position of first hit
        top1 = hit[:, 0]
        present, inverse = np.unique(true_code, return_inverse=True)
        recall = np.bincount(inverse, weights=top1, minlength=len(present)) / np.bincount(inverse)
        results.append(
            TierResult(
                tier=names[t - 1],
                depth=t,
                n=n,
                n_classes=len(np.unique(class_code)),
                top1=float(top1.mean()),
                topk={int(k): float((first_hit < min(int(k), c)).mean()) for k in ks},
                mean_per_class_recall=float(recall.mean()),
            )
        )
    return results
