"""Embed image files on Ray Data: the files as a Dataset in blocks, decoded and embedded by an actor pool.

`RayImageEmbedder` is an `ImageBackend` for `vlmops.store.embed.use_image_backend`: the cache lookup,
the writes and the progress bar stay in the calling process, only the misses travel. Each actor loads
the model once (by its URI, so every node needs the same weights at the same path, or a builtin
model), checks it has the caller's model version, and embeds one Ray Data task per call (a block of
up to `BATCHES_PER_TASK` of the caller's batches, run through the model batch by batch) with
``cpus_per_actor`` torch threads. After a job, `RayImageEmbedder.stats` says what each actor did
(start-up, images, CPU per image) and how much of the time all actors were busy at once. An actor that
dies (a killed worker, a lost node) is restarted by Ray and its task run again (`scale.pool`);
each file's vector depends on the file alone, so the result is
the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from vlmops.models.base import VLM, batched
from vlmops.scale.pool import ActorPool, load_actor_model, run_actor_pool, task_stats
from vlmops.scale.stats import RayJobStats


def _load(uri: str) -> VLM:
    from vlmops.models import load_model

    return load_model(uri)


class EmbedActor:
    """One actor of the pool: loads the model once, then embeds tasks of image files in model batches."""

    def __init__(
        self, uri: str, version: str, threads: int, loader: Callable[[str], VLM], batch_size: int
    ) -> None:
        self.model, self.startup = load_actor_model(uri, version, threads, loader)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vlmops.data.images import load_image

        start, cpu = time.time(), time.process_time()
        vectors = [
            np.asarray(self.model.embed_images([load_image(path) for path in paths]), dtype=np.float32)
            for paths in batched(list(batch["path"]), self.batch_size)
        ]
        vectors = np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
        return {
            "key": batch["key"],
            "vector": vectors,
            "stats": task_stats(start, cpu, len(vectors), self.startup),
        }


@dataclass
class RayImageEmbedder(ActorPool):
    """Embeds image files on the connected Ray cluster with `actors` actors of `cpus_per_actor` CPUs."""

    loader: Callable[[str], VLM] = field(default=_load)  # picklable: runs on the workers
    stats: RayJobStats | None = field(default=None, init=False)  # of the last job, set when it ends

    def embed_files(
        self, model: VLM, items: Sequence[tuple[str, str]], batch_size: int
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(keys, vectors)`` chunks for `items` ((content key, path) pairs) as Ray returns them."""
        if not items:
            return
        self.stats = None
        rows = [{"key": key, "path": path} for key, path in items]
        job = run_actor_pool(
            EmbedActor,
            model,
            rows,
            {},
            self.actors,
            self.cpus_per_actor,
            batch_size,
            self.loader,
            "embedding",
        )
        for batch in job:
            yield [str(key) for key in batch["key"]], np.asarray(batch["vector"], dtype=np.float32)
        self.stats = job.stats
