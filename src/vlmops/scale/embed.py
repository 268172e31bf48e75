"""Embed image files on Ray Data: the files as a Dataset in blocks, decoded and embedded by an actor pool.

`RayImageEmbedder` is an `ImageBackend` for `vlmops.store.embed.use_image_backend`: the cache lookup,
the writes and the progress bar stay in the calling process, only the misses travel. Each actor loads
the model once (by its URI, so every node needs the same weights at the same path, or a builtin
model), checks it has the caller's model version, and embeds one Ray Data task per call (a block of
up to `BATCHES_PER_TASK` of the caller's batches, run through the model batch by batch) with
``cpus_per_actor`` torch threads. After a job, `RayImageEmbedder.stats` says what each actor did
(start-up, images, CPU per image) and how much of the time all actors were busy at once. An actor that
dies (a killed worker, a lost node) is restarted by Ray and its task run again
(``max_restarts``/``max_task_retries``); each file's vector depends on the file alone, so the result is
the same.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from vlmops.errors import VlmopsError
from vlmops.models.base import VLM, batched
from vlmops.scale.stats import RayJobStats

MAX_RESTARTS = 3  # per actor
MAX_TASK_RETRIES = 3  # per batch, on an actor that died while running it
# Model batches per Ray Data task (one block, one actor call). Each task costs Ray Data ~5 ms of the
# actor's CPU outside the model and the driver a result round, so one 64-image batch per task (~75 ms)
# lost 6-8 % of an actor's time; a task of 4 batches keeps the tail short (two actors finish within
# one task, ~0.3 s apart) while the per-task cost falls 4x (bench/RESULTS.md, issue 18).
BATCHES_PER_TASK = 4
MIN_TASKS_PER_ACTOR = 4  # small jobs: smaller tasks rather than an actor left without work
# Rows queued per actor (as whole tasks, at least 2). With one 64-image batch per task, Ray Data's
# default of 2 tasks left an actor idle while the driver turned a result round: on 8,000 emoji with 2
# actors, both were busy 59-62 % of the job with 2 tasks (128 rows), 80-83 % with 8 (512 rows). More
# than that lets the first actor ready take most of a short job before the second has started.
ROWS_IN_FLIGHT = 512


class RayJobError(VlmopsError):
    """A Ray job failed (a worker error that retries did not cure)."""


def _retries() -> dict[str, int]:
    """Remote options of each actor: bounded restarts and retries (Ray Data's default is forever)."""
    return {"max_restarts": MAX_RESTARTS, "max_task_retries": MAX_TASK_RETRIES}


def _load(uri: str) -> VLM:
    from vlmops.models import load_model

    return load_model(uri)


class EmbedActor:
    """One actor of the pool: loads the model once, then embeds tasks of image files in model batches."""

    def __init__(
        self, uri: str, version: str, threads: int, loader: Callable[[str], VLM], batch_size: int
    ) -> None:
        started = time.perf_counter()
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # a model without torch (onnx)
            pass
        self.model = loader(uri)
        if self.model.info.version != version:
            raise VlmopsError(
                f"a Ray worker loaded {uri} as version {self.model.info.version}, the caller has {version}: "
                "give every node the same weights at the same path"
            )
        self.batch_size = batch_size
        self.startup = (time.perf_counter() - started, time.process_time())  # CPU: the process's so far

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vlmops.data.images import load_image

        start, cpu = time.time(), time.process_time()
        vectors = [
            np.asarray(self.model.embed_images([load_image(path) for path in paths]), dtype=np.float32)
            for paths in batched(list(batch["path"]), self.batch_size)
        ]
        vectors = np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
        stats = (os.getpid(), start, time.time(), time.process_time() - cpu, len(vectors), *self.startup)
        out = {"key": batch["key"], "vector": vectors}
        out["stats"] = np.array([stats] * len(vectors), dtype=np.float64)  # the task's, on each row
        return out


@dataclass
class RayImageEmbedder:
    """Embeds image files on the connected Ray cluster with `actors` actors of `cpus_per_actor` CPUs."""

    actors: int = 2
    cpus_per_actor: float = 1.0
    loader: Callable[[str], VLM] = field(default=_load)  # picklable: runs on the workers
    stats: RayJobStats | None = field(default=None, init=False)  # of the last job, set when it ends

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise VlmopsError(f"--ray-actors must be at least 1, got {self.actors}")
        if self.cpus_per_actor <= 0:
            raise VlmopsError(f"--ray-cpus-per-actor must be above 0, got {self.cpus_per_actor}")

    def embed_files(
        self, model: VLM, items: Sequence[tuple[str, str]], batch_size: int
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(keys, vectors)`` chunks for `items` ((content key, path) pairs) as Ray returns them."""
        import logging
        import warnings

        import ray

        if not items:
            return
        self._check_room(float(ray.cluster_resources().get("CPU", 0.0)))
        data = ray.data.DataContext.get_current()
        data.enable_progress_bars = False  # the caller's bar counts the vectors as they arrive
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-run INFO lines on the console
        per_task = rows_per_task(len(items), batch_size, self.actors)
        rows = [{"key": key, "path": path} for key, path in items]  # from_items: no metadata tasks
        dataset = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_task))
        threads = max(1, int(self.cpus_per_actor))
        with warnings.catch_warnings():
            # Ray 2.60 has no other way to bound restarts (the extra pins 2.60; removed in 2.64)
            warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated")
            embedded = dataset.map_batches(
                EmbedActor,
                fn_constructor_kwargs={
                    "uri": model.info.uri,
                    "version": model.info.version,
                    "threads": threads,
                    "loader": self.loader,
                    "batch_size": batch_size,
                },
                batch_size=None,  # a block per call: the actor cuts it into model batches
                batch_format="numpy",
                compute=pool_strategy(self.actors, per_task),
                num_cpus=self.cpus_per_actor,
                ray_remote_args_fn=_retries,
            )
        batches: dict[tuple[float, float], tuple] = {}  # (pid, start) -> the batch's stats
        self.stats = None
        try:
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                batches.update({(row[0], row[1]): tuple(row) for row in batch["stats"].tolist()})
                yield [str(key) for key in batch["key"]], np.asarray(batch["vector"], dtype=np.float32)
        except Exception as exc:  # Ray wraps worker errors in its own types; report the cause in one line
            if not _is_ray_error(exc):
                raise
            cause = str(exc).strip().splitlines()
            raise RayJobError(
                f"the Ray embedding job failed: {cause[-1] if cause else type(exc).__name__}"
            ) from exc
        self.stats = RayJobStats.from_batches(list(batches.values()))

    def _check_room(self, cpus: float) -> None:
        """Fail now, not by waiting forever, when the pool cannot fit in the cluster."""
        need = self.actors * self.cpus_per_actor
        if need > cpus:
            raise VlmopsError(
                f"{self.actors} actors x {self.cpus_per_actor:g} CPUs = {need:g} CPUs, but the Ray cluster "
                f"has {cpus:g}: lower --ray-actors or --ray-cpus-per-actor, or add nodes"
            )


def rows_per_task(items: int, batch_size: int, actors: int) -> int:
    """Rows of one Ray Data task (block): `BATCHES_PER_TASK` model batches, fewer when the job is too
    small to give each actor `MIN_TASKS_PER_ACTOR` tasks; a whole number of batches."""
    fit = items // (batch_size * actors * MIN_TASKS_PER_ACTOR)
    return batch_size * max(1, min(BATCHES_PER_TASK, fit))


def pool_strategy(actors: int, per_task: int):
    """Ray Data's fixed-size actor pool of `actors`, each with about `ROWS_IN_FLIGHT` rows queued."""
    import ray

    in_flight = max(2, ROWS_IN_FLIGHT // per_task)
    return ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=in_flight)


def _is_ray_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "ray" or any(
        type(cause).__module__.split(".")[0] == "ray" for cause in _causes(exc)
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__
