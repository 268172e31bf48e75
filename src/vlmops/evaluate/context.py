"""One evaluation's shared state: the model, the task, the embedding cache, and embeddings computed once.

Every section of `vlmops eval` asks the context for embeddings; the context goes through the store, so
each image, each (image, variant) pair and each prompt is embedded once per model version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from vlmops.evaluate.task import EvalTask
from vlmops.models.base import VLM, l2_normalise
from vlmops.store.cache import EmbeddingCache
from vlmops.store.embed import (
    EmbedStats,
    ImageVariant,
    content_sha256,
    embed_image_variants_cached,
    embed_images_cached,
    embed_texts_cached,
)


@dataclass
class EvalContext:
    """Model + task + cache; embeddings are memoised here and in the store."""

    model: VLM
    task: EvalTask
    cache: EmbeddingCache
    seed: int = 0
    batch_size: int = 64
    progress: bool = True
    stats: list[EmbedStats] = field(default_factory=list)

    @cached_property
    def content_keys(self) -> list[str]:
        """sha256 of every evaluated image file (the cache's content key)."""
        return [content_sha256(p) for p in self.task.frame["image"]]

    @cached_property
    def image_emb(self) -> np.ndarray:
        """(n, d) clean image embeddings of the evaluated rows."""
        emb, stats = embed_images_cached(
            self.model,
            list(self.task.frame["image"]),
            self.cache,
            self.batch_size,
            self.progress,
            content_keys=self.content_keys,
        )
        self.stats.append(stats)
        return emb

    @cached_property
    def class_emb(self) -> np.ndarray:
        """(c, d) class embeddings from the task's class names and templates."""
        return self.text_classifier(self.task.class_names, self.task.templates)

    def text_emb(self, texts: Sequence[str]) -> np.ndarray:
        """(m, d) text embeddings through the cache."""
        emb, stats = embed_texts_cached(self.model, list(texts), self.cache, progress=self.progress)
        self.stats.append(stats)
        return emb

    def text_classifier(self, names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """One unit vector per class name: the mean of its prompt embeddings over `templates` (CLIP)."""
        prompts = [t.format(name) for name in names for t in templates]
        emb = self.text_emb(prompts).reshape(len(names), len(templates), -1)
        return l2_normalise(emb.mean(axis=1))

    def variant_emb(
        self, variant: str | Sequence[str], make: ImageVariant, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Embeddings of `make(image, seed, variant)` for `rows` (default: all), cached per pair."""
        rows = np.arange(self.task.n) if rows is None else np.asarray(rows)
        paths = [self.task.frame["image"].iloc[i] for i in rows]
        keys = [self.content_keys[i] for i in rows]
        emb, stats = embed_image_variants_cached(
            self.model, paths, variant, make, self.cache, self.batch_size, False, keys
        )
        self.stats.append(stats)
        return emb

    def logits(self, image_emb: np.ndarray, class_emb: np.ndarray | None = None) -> np.ndarray:
        """Zero-shot logits: the model's logit scale times cosine similarity."""
        class_emb = self.class_emb if class_emb is None else class_emb
        return float(self.model.logit_scale) * (image_emb.astype(np.float64) @ class_emb.T.astype(np.float64))

    def sample(self, size: int | None, salt: str) -> np.ndarray:
        """A seeded, sorted subset of row indices (all rows when `size` is None or >= n)."""
        n = self.task.n
        if size is None or size >= n:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, _salt(salt)])
        return np.sort(rng.choice(n, size=size, replace=False))

    def cache_totals(self) -> dict:
        """Distinct inputs served from the cache vs embedded by the model, over the whole run."""
        hits = sum(s.hits for s in self.stats)
        misses = sum(s.misses for s in self.stats)
        return {"hits": hits, "misses": misses, "embed_seconds": round(sum(s.seconds for s in self.stats), 3)}


def _salt(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
