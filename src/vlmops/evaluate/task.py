"""What an evaluation runs on: the rows of one split, their labels at a chosen tier, and the candidates.

A manifest's `label` is a `/`-separated path (`category/subcategory/concept` for emoji). `--labels`
picks the tier that is classified: the labels are truncated to it, every distinct truncated label is a
candidate class, and its last part is the class name put into the prompt templates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlmops.errors import DataError
from vlmops.evaluate.tiers import tiers_of, truncate

EMOJI_TIERS = ("category", "subcategory", "concept")
DEFAULT_TEMPLATES = {"emoji": ("an emoji of {}",), "other": ("a photo of {}.",)}


@dataclass(frozen=True)
class EvalTask:
    """The evaluated rows (index 0..n-1) with their true labels, candidate classes and clusters."""

    frame: pd.DataFrame
    tier_names: tuple[str, ...]
    labels: list[str]
    classes: list[str]
    class_names: list[str]
    templates: tuple[str, ...]
    clusters: np.ndarray
    cluster_by: str | None
    split: str | None

    @property
    def n(self) -> int:
        """Number of evaluated images."""
        return len(self.frame)

    @property
    def targets(self) -> np.ndarray:
        """Index of each row's true class in `classes`."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    def describe(self) -> dict:
        """JSON-ready summary of what was evaluated."""
        return {
            "split": self.split,
            "n": self.n,
            "n_classes": len(self.classes),
            "label_tier": self.tier_names[-1],
            "tiers": list(self.tier_names),
            "templates": list(self.templates),
            "cluster_by": self.cluster_by,
            "n_clusters": len(np.unique(self.clusters)),
        }


def prompt_name(part: str) -> str:
    """The words a label part stands for: slugs such as `face-smiling` become `face smiling`."""
    return part.replace("_", " ").replace("-", " ") if " " not in part else part


def tier_names_for(data_spec: str, depth: int) -> tuple[str, ...]:
    """Tier names, coarsest first: emoji's own, else `level1..levelN`."""
    if data_spec == "emoji" and depth == len(EMOJI_TIERS):
        return EMOJI_TIERS
    return tuple(f"level{i}" for i in range(1, depth + 1))


def select_split(
    frame: pd.DataFrame, split: str | None, option: str = "--split"
) -> tuple[pd.DataFrame, str | None]:
    """Rows of `split` ('test' by default when the data has one, 'all' for every row) and its name."""
    available = sorted({s for s in frame["split"].dropna().unique()})
    if split is None:
        if "test" in available:
            return frame[frame["split"] == "test"], "test"
        return frame, None
    if split == "all":
        return frame, None
    if split not in available:
        raise DataError(
            f"split {split!r} not in the data (splits: {', '.join(available) or 'none'}); "
            f"pass {option} with one of them, or {option} all"
        )
    return frame[frame["split"] == split], split


def _resolve_tier(tier: str | None, names: tuple[str, ...]) -> int:
    if tier is None:
        return len(names)
    if tier in names:
        return names.index(tier) + 1
    if tier.isdigit() and 1 <= int(tier) <= len(names):
        return int(tier)
    raise DataError(
        f"unknown label tier {tier!r}: this data's labels have tiers {', '.join(names)} "
        f"(or a depth 1..{len(names)}); pass one of them to --labels"
    )


def build_task(
    frame: pd.DataFrame,
    data_spec: str = "other",
    split: str | None = None,
    tier: str | None = None,
    templates: Sequence[str] | None = None,
    cluster_by: str | None = None,
    split_option: str = "--split",
) -> EvalTask:
    """Select `split`, truncate labels to `tier`, and collect the candidate classes.

    `split_option` is the command-line option that chose `split`, named in the error for a missing one.
    """
    rows, split_name = select_split(frame, split, split_option)
    unlabelled = rows["label"].isna()
    if unlabelled.all():
        raise DataError("no labelled rows to evaluate: add a 'label' column (a/b/c paths allowed)")
    if unlabelled.any():
        ids = rows.loc[unlabelled, "id"].head(5).tolist()
        raise DataError(
            f"{int(unlabelled.sum())} rows have no label (e.g. {ids}): label them or drop them before eval"
        )
    rows = rows.reset_index(drop=True)
    try:
        depth = tiers_of(list(rows["label"]))
    except ValueError as exc:
        raise DataError(f"bad labels: {exc}") from None
    names = tier_names_for(data_spec, depth)
    chosen = _resolve_tier(tier, names)
    labels = [truncate(label, chosen) for label in rows["label"]]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"only one class ({classes[0]!r}) at tier {names[chosen - 1]}: nothing to classify")
    templates = tuple(templates or DEFAULT_TEMPLATES["emoji" if data_spec == "emoji" else "other"])
    for template in templates:
        if template.count("{}") != 1:
            raise DataError(f"prompt template {template!r} needs exactly one '{{}}' for the class name")
    if cluster_by is None and data_spec == "emoji":
        cluster_by = "concept"
    if cluster_by is not None and cluster_by not in rows.columns:
        raise DataError(f"--cluster-by {cluster_by!r} is not a column; columns: {', '.join(rows.columns)}")
    clusters = (
        pd.factorize(rows[cluster_by].astype(str))[0] if cluster_by else np.arange(len(rows), dtype=np.int64)
    )
    return EvalTask(
        frame=rows,
        tier_names=names[:chosen],
        labels=labels,
        classes=classes,
        class_names=[prompt_name(c.split("/")[-1]) for c in classes],
        templates=templates,
        clusters=np.asarray(clusters, dtype=np.int64),
        cluster_by=cluster_by,
        split=split_name,
    )
