"""Cross-modal retrieval metrics: Recall@K, median and mean rank, image->text and text->image.

Similarity is cosine: both embedding sets are scaled to unit length (a no-op for the unit vectors a dual
encoder returns). Each query ranks every item of the other modality by descending similarity; ties are broken
by item index (lower index ranks first; a stable sort), so results are deterministic. The rank of a query is
the 1-based position of its first relevant item; it is a hit at K when that rank is <= K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DirectionResult", "RetrievalResult", "relevance_matrix", "retrieval_metrics"]

Relevance = Sequence[set[int]] | Sequence[Sequence[int]] | np.ndarray


@dataclass(frozen=True)
class DirectionResult:
    """Retrieval quality in one direction (queries of one modality against items of the other)."""

    n_queries: int
    n_items: int
    recall: dict[int, float]
    median_rank: float
    mean_rank: float
    ranks: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready summary with one `R@{k}` key per requested k (without per-query ranks)."""
        out: dict = {"n_queries": self.n_queries, "n_items": self.n_items}
        out.update({f"R@{k}": v for k, v in sorted(self.recall.items())})
        out.update({"median_rank": self.median_rank, "mean_rank": self.mean_rank})
        return out


@dataclass(frozen=True)
class RetrievalResult:
    """Retrieval metrics in both directions."""

    image_to_text: DirectionResult
    text_to_image: DirectionResult

    def to_dict(self) -> dict:
        """JSON-ready summary of both directions."""
        return {"image_to_text": self.image_to_text.to_dict(), "text_to_image": self.text_to_image.to_dict()}


def relevance_matrix(image_to_text: Relevance, n_images: int, n_texts: int) -> np.ndarray:
    """Boolean (n_images, n_texts) matrix from relevant text indices per image, or a 1-D int array."""
    if isinstance(image_to_text, np.ndarray):
        if image_to_text.ndim != 1 or image_to_text.dtype.kind not in "iu":
            raise ValueError(
                f"an image_to_text array must be 1-D integer (one text index per image), got shape "
                f"{image_to_text.shape} dtype {image_to_text.dtype}: pass a list of sets for several texts"
            )
        image_to_text = [{int(j)} for j in image_to_text]
    if len(image_to_text) != n_images:
        raise ValueError(f"image_to_text has {len(image_to_text)} entries but there are {n_images} images")
    rel = np.zeros((n_images, n_texts), dtype=bool)
    for i, texts in enumerate(image_to_text):
        idx = np.fromiter((int(j) for j in texts), dtype=np.int64)
        if idx.size == 0:
            raise ValueError(f"image {i} has no relevant text: every image needs at least one")
        if idx.min() < 0 or idx.max() >= n_texts:
            raise ValueError(
                f"image {i} refers to text index {int(idx.max() if idx.max() >= n_texts else idx.min())}, "
                f"outside [0, {n_texts}): check the image-to-text mapping"
            )
        rel[i, idx] = True
    return rel


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN/inf values: drop those rows")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{name} has zero rows (e.g. row {int(np.argmin(norms))}): cosine is undefined")
    return x / norms


def first_relevant_rank(sim: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """1-based rank of the first relevant item per query row (ties by item index); rows need one."""
    order = np.argsort(-sim, axis=1, kind="stable")
    return np.take_along_axis(rel, order, axis=1).argmax(axis=1) + 1


def _direction(sim: np.ndarray, rel: np.ndarray, ks: Sequence[int]) -> DirectionResult:
    ranks = first_relevant_rank(sim, rel)
    return DirectionResult(
        n_queries=int(ranks.shape[0]),
        n_items=int(sim.shape[1]),
        recall={int(k): float((ranks <= k).mean()) for k in ks},
        median_rank=float(np.median(ranks)),
        mean_rank=float(ranks.mean()),
        ranks=ranks,
    )


def retrieval_metrics(
    image_emb: np.ndarray, text_emb: np.ndarray, image_to_text: Relevance, ks: Sequence[int] = (1, 5, 10)
) -> RetrievalResult:
    """Recall@K and median/mean first-relevant rank for image->text and text->image retrieval.

    Texts relevant to no image (distractors) are candidates for image->text but are not text->image queries.
    """
    img, txt = _unit(image_emb, "image_emb"), _unit(text_emb, "text_emb")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"image_emb has {img.shape[1]}-d vectors but text_emb has {txt.shape[1]}-d: embed both with "
            "the same model"
        )
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {tuple(ks)}")
    rel = relevance_matrix(image_to_text, img.shape[0], txt.shape[0])
    sim = img @ txt.T
    queried = rel.any(axis=0)
    return RetrievalResult(
        image_to_text=_direction(sim, rel, ks),
        text_to_image=_direction(sim.T[queried], rel.T[queried], ks),
    )
