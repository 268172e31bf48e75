"""Generate answers on Ray Data: (image, prompt) pairs as a Dataset in blocks, answered by an actor pool.

`RayGenerator` is a `GenerationBackend` for `vlmops.store.generate.use_generation_backend`: the cache
lookup, the writes and the progress bar stay in the calling process, only the misses travel. Each
actor loads the generative model once (by its URI, as `EmbedActor` does), checks it has the caller's
model version, and answers one batch per call with the caller's decoding settings. A derived image
(a corruption, a band with text: `DerivedImage`) travels as its file path and variant name; the
actor makes it with the caller's function for that variant, so the pixels are the caller's. Answers
come back as the cache's JSON, so they are the same `Generation` objects a local run makes; an actor
that dies is restarted by Ray and its batch run again (the pool's `_actor_options`).

A job with fewer than `min_items` pairs is answered in the calling process with its own copy of the
model: a pool's start-up (actor processes, imports, one model load each: ~5 s here) costs more than it
saves below a few hundred answers, and an eval's robustness part makes many such small jobs (one per
corruption). The answers are the same either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from vlmops.models.base import GenerativeVLM
from vlmops.scale.pool import ActorPool, load_actor_model, run_actor_pool, task_stats
from vlmops.scale.stats import RayJobStats
from vlmops.store.generate import (
    DecodingParams,
    DerivedImage,
    GenerationChunks,
    ImageSource,
    from_json,
    local_chunks,
    to_json,
)

# A Ray task's fixed cost (~50 ms of CPU) in rows of generation (~0.5 s or more per answer): a tenth of
# a row, so generation tasks stay a batch or a few and the job's tail short (`pool.rows_per_task`).
GENERATE_TASK_COST_ROWS = 0.1
MIN_ITEMS = 512  # smaller jobs are answered here (see the module's docstring)


def _load(uri: str) -> GenerativeVLM:
    from vlmops.models import load_model

    return load_model(uri)


class GenerateActor:
    """One actor of the pool: loads the model once, then answers batches of (image, prompt) pairs."""

    def __init__(
        self,
        uri: str,
        version: str,
        threads: int,
        loader: Callable[[str], GenerativeVLM],
        batch_size: int,
        params: dict,
        makers: dict[str, Callable],
    ) -> None:
        self.model, self.startup = load_actor_model(uri, version, threads, loader)
        self.batch_size = batch_size
        self.params = DecodingParams(**params)
        self.makers = makers

    def _image(self, path: str, variant: str) -> ImageSource:
        return DerivedImage(path, variant, self.makers[variant]) if variant else path

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start, cpu = time.time(), time.process_time()
        columns = zip(batch["key"], batch["path"], batch["variant"], batch["prompt"], strict=True)
        items = [(str(k), self._image(str(p), str(v)), str(q)) for k, p, v, q in columns]
        chunks = local_chunks(self.model, items, self.params, self.batch_size)  # model batches
        answers = [to_json(g) for _, produced in chunks for g in produced]
        return {
            "key": batch["key"],
            "answer": np.array(answers, dtype=object),
            "stats": task_stats(start, cpu, len(answers), self.startup),
        }


@dataclass
class RayGenerator(ActorPool):
    """Answers (image, prompt) pairs on the connected Ray cluster with `actors` actors of
    `cpus_per_actor` CPUs."""

    min_items: int = MIN_ITEMS
    loader: Callable[[str], GenerativeVLM] = field(default=_load)  # picklable: runs on the workers
    stats: RayJobStats | None = field(default=None, init=False)  # of the last job, set when it ends

    def generate_pairs(
        self,
        model: GenerativeVLM,
        items: Sequence[tuple[str, ImageSource, str]],
        params: DecodingParams,
        batch_size: int,
    ) -> GenerationChunks:
        """Yield ``(keys, generations)`` chunks for `items` ((key, image, prompt)) as Ray returns them."""
        if len(items) < self.min_items:
            yield from local_chunks(model, items, params, batch_size)
            return
        rows, makers = [], {}
        for key, image, prompt in items:
            if isinstance(image, DerivedImage):
                makers.setdefault(image.variant, image.make)  # a variant name fixes the pixels
                rows.append(
                    {"key": key, "path": str(image.source), "variant": image.variant, "prompt": prompt}
                )
            else:
                rows.append({"key": key, "path": str(image), "variant": "", "prompt": prompt})
        kwargs = {"params": params.to_dict(), "makers": makers}
        job = run_actor_pool(
            GenerateActor, model, rows, kwargs, self.actors, self.cpus_per_actor, batch_size, self.loader,
            what="generation", task_cost_rows=GENERATE_TASK_COST_ROWS,
        )  # fmt: skip
        yield from _answers(job)
        self.stats = job.stats


def _answers(job) -> Iterator[tuple[list[str], list]]:
    for batch in job:
        yield [str(key) for key in batch["key"]], [from_json(str(text)) for text in batch["answer"]]
