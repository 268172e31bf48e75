"""Zero-shot classification with a dual encoder: class names -> prompt embeddings -> argmax."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlmops.data.images import load_image
from vlmops.models.base import VLM, batched, l2_normalise

DEFAULT_TEMPLATES = ("an emoji of {}",)


def class_embeddings(
    model: VLM, names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> np.ndarray:
    """One unit vector per class: the mean of its prompt embeddings over `templates` (CLIP style)."""
    if not names:
        raise ValueError("zero-shot classification needs at least one class name")
    prompts = [template.format(name) for name in names for template in templates]
    emb = model.embed_texts(prompts).reshape(len(names), len(templates), -1)
    return l2_normalise(emb.mean(axis=1))


def image_embeddings(model: VLM, paths: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Embed image files in batches (no cache; see vlmops.store for the cached path)."""
    chunks = [np.zeros((0, model.info.dim), dtype=np.float32)]
    chunks += [
        model.embed_images([load_image(p) for p in batch]) for batch in batched(list(paths), batch_size)
    ]
    return np.concatenate(chunks)


@dataclass(frozen=True)
class ZeroShotResult:
    """Top-k accuracy of one zero-shot run, with its size."""

    n: int
    n_classes: int
    top1: float
    top5: float
    predictions: list[str]

    def to_dict(self) -> dict:
        """JSON-ready summary (without per-item predictions)."""
        return {"n": self.n, "n_classes": self.n_classes, "top1": self.top1, "top5": self.top5}


def zero_shot(
    image_emb: np.ndarray, class_emb: np.ndarray, classes: Sequence[str], truth: Sequence[str]
) -> ZeroShotResult:
    """Score each image against every class; top-1/top-5 accuracy against the true class names."""
    index = {name: i for i, name in enumerate(classes)}
    missing = sorted({t for t in truth if t not in index})
    if missing:
        raise ValueError(f"true labels not among the candidate classes: {missing[:5]}")
    scores = image_emb @ class_emb.T
    targets = np.array([index[t] for t in truth])
    order = np.argsort(-scores, axis=1)[:, :5]
    top1 = float(np.mean(order[:, 0] == targets)) if len(targets) else float("nan")
    top5 = float(np.mean((order == targets[:, None]).any(axis=1))) if len(targets) else float("nan")
    return ZeroShotResult(len(targets), len(classes), top1, top5, [classes[i] for i in order[:, 0]])


def evaluate_frame(
    model: VLM,
    frame: pd.DataFrame,
    classes: Sequence[str],
    column: str = "name",
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    image_emb: np.ndarray | None = None,
) -> ZeroShotResult:
    """Zero-shot accuracy of `model` on the rows of `frame`, true class in `column`."""
    if image_emb is None:
        image_emb = image_embeddings(model, list(frame["image"]))
    return zero_shot(
        image_emb, class_embeddings(model, classes, templates), list(classes), list(frame[column])
    )
