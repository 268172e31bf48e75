"""Code that runs inside Ray workers during the tests (importable there: tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class ModelWrapper:
    """A model's info and transform, its calls counted; `embed_images` is the wrapper's own."""

    def __init__(self, model, marker: str) -> None:
        self.model, self.info, self.marker = model, model.info, Path(marker)
        self.transform_id = model.transform_id
        self.calls = 0


class CrashingModel(ModelWrapper):
    """Wraps a model; the first actor to reach its second batch kills its own process (SIGKILL) once."""

    def embed_images(self, images):
        self.calls += 1
        if self.calls == 2 and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` from outside: no clean-up, mid-job
        return self.model.embed_images(images)


class Wrapped:
    """A picklable loader for `RayImageEmbedder`: the real model of the URI, wrapped in
    ``wrapper(model, *args)`` (`CrashingModel`, `WaitsForTheCaller`)."""

    def __init__(self, wrapper: type, *args) -> None:
        self.wrapper, self.args = wrapper, args

    def __call__(self, uri: str):
        from vlmops.models import load_model

        return self.wrapper(load_model(uri), *self.args)


class WaitsForTheCaller(ModelWrapper):
    """Wraps a model: from its second call on, it waits (up to `wait` s) until the caller has written
    `marker`, which it does on receiving the first call's vectors; `marker`.seen says if it ever came."""

    def __init__(self, model, marker: str, wait: float) -> None:
        super().__init__(model, marker)
        self.wait = wait

    def embed_images(self, images):
        self.calls += 1
        _log_event(self.marker, f"actor call {self.calls}: {len(images)} images")
        deadline = time.time() + self.wait
        while self.calls > 1 and not self.marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        if self.calls == 2:
            self.marker.with_suffix(".seen").write_text(str(self.marker.exists()))
        vectors = self.model.embed_images(images)
        _log_event(self.marker, f"actor call {self.calls} done")
        return vectors


def _dump_stacks_if_held(marker: Path, hold: float = 5.0) -> None:
    """If the actor's first call is `hold` s done and the caller has no result yet, write every thread's
    stack of this (the caller's) process to `marker`.log: where Ray Data holds the result."""
    import faulthandler

    log = marker.with_suffix(".log")
    while not marker.exists():
        lines = log.read_text().splitlines() if log.exists() else []
        done = [float(line.split()[0]) for line in lines if line.endswith("call 1 done")]
        if done and time.time() - done[0] > hold:
            with open(log, "a") as out:
                out.write(f"{time.time():.3f} caller's threads, {hold:g} s after call 1 was done:\n")
                out.flush()
                faulthandler.dump_traceback(out, all_threads=True)
            return
        time.sleep(0.2)


def _log_event(marker: Path, what: str) -> None:
    """Append a timed line to `marker`.log, which the test shows when it fails."""
    with open(Path(marker).with_suffix(".log"), "a") as log:
        log.write(f"{time.time():.3f} {what}\n")


def first_result_job(marker: str, manifest: str, wait: float = 20) -> None:
    """One actor, tasks of one 64-image batch: the caller writes `marker` when the first task's vectors
    reach it, while the actor's second task waits for it. The tasks are all of one size: Ray Data lets an
    actor run its queued tasks in any order (allow_out_of_order_execution), and when a task of 72 ran first
    its second model call (the last 8 images) waited for vectors that could only come after it."""
    from vlmops.data.manifest import resolve_data
    from vlmops.models import load_model
    from vlmops.scale import RayImageEmbedder, connect
    from vlmops.scale.pool import task_sizes

    paths = [str(p) for p in resolve_data(manifest)["image"]]
    items = [(f"key-{i}", paths[i % len(paths)]) for i in range(192)]  # keys, not files, make the rows
    assert task_sizes(len(items), 64, 1) == [64, 64, 64]
    backend = RayImageEmbedder(1, 1.0, loader=Wrapped(WaitsForTheCaller, marker, wait))
    threading.Thread(target=_dump_stacks_if_held, args=(Path(marker),), daemon=True).start()
    with connect("local"):
        for i, (keys, _) in enumerate(backend.embed_files(load_model("builtin:emoji-lit"), items, 64)):
            _log_event(Path(marker), f"caller got result {i}: {len(keys)} vectors")
            if i == 0:
                Path(marker).write_text("received")


def crash_job(out: str, marker: str, manifest: str, batch_size: int = 8) -> None:
    """Embed a manifest locally, then on a private local Ray whose worker dies once; save both."""
    from vlmops.data.manifest import resolve_data
    from vlmops.models import load_model
    from vlmops.scale import RayImageEmbedder, connect
    from vlmops.store.cache import EmbeddingCache
    from vlmops.store.embed import embed_images_cached, use_image_backend

    paths = list(resolve_data(manifest)["image"])
    model = load_model("builtin:emoji-lit")
    local, _ = embed_images_cached(model, paths, EmbeddingCache(":memory:"), batch_size, progress=False)
    cache = EmbeddingCache(Path(out).with_suffix(".sqlite"))
    backend = RayImageEmbedder(2, 1.0, loader=Wrapped(CrashingModel, marker))
    with connect("local") as cluster, use_image_backend(backend):
        remote, stats = embed_images_cached(model, paths, cache, batch_size, progress=True)
    np.savez(out, local=local, remote=remote)
    summary = {"cluster": cluster.describe(), "stats": stats.to_dict(), "cached": cache.count()}
    summary["ray"] = backend.stats.to_dict()
    Path(out).with_suffix(".json").write_text(json.dumps(summary))


def generate_job(out: str, manifest: str, limit: int = 8) -> None:
    """Answer files and images derived from them (a lambda, as the eval's corruptions are) locally, then
    on a private local Ray with every job sent to the pool; save both as the cache's JSON."""
    from vlmops.data.manifest import resolve_data
    from vlmops.models import load_model
    from vlmops.scale import RayGenerator, connect
    from vlmops.store.cache import EmbeddingCache
    from vlmops.store.generate import (
        DecodingParams,
        DerivedImage,
        generate_cached,
        to_json,
        use_generation_backend,
    )

    paths = [str(p) for p in resolve_data(manifest)["image"]][:limit]
    images = [*paths, *(DerivedImage(p, "rotate:90", lambda im: im.rotate(90)) for p in paths)]
    prompts = ["Describe this emoji."] * len(images)
    model = load_model("builtin:emoji-captioner")
    params = DecodingParams(max_tokens=12)
    local, _ = generate_cached(model, images, prompts, params, EmbeddingCache(":memory:"), batch_size=4)
    cache = EmbeddingCache(Path(out).with_suffix(".sqlite"))
    backend = RayGenerator(2, 1.0, min_items=0)
    with connect("local"), use_generation_backend(backend):
        remote, stats = generate_cached(model, images, prompts, params, cache, batch_size=4)
    summary = {
        "local": [json.loads(to_json(g)) for g in local],
        "remote": [json.loads(to_json(g)) for g in remote],
        "stats": stats.to_dict(),
        "ray": backend.stats.to_dict(),
    }
    Path(out).write_text(json.dumps(summary))


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: the state is [0], the parent [1]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _own_processes() -> Iterator[tuple[Path, bytes]]:
    """This user's processes: their /proc folder and command line (arguments NUL-separated); a process
    gone meanwhile is skipped, but the caller's own reads may still meet one that has just gone."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == os.getuid():
                yield entry, (entry / "cmdline").read_bytes()
        except OSError:
            continue


def warm_idle_workers(loaded: str = "libtorch", settle: float = 0.5) -> dict[int, float]:
    """This user's idle Ray workers ("ray::IDLE") that have `loaded` mapped and whose CPU time stopped
    growing over `settle` s (worker processes up, their preloaded imports done), with the CPU seconds
    each has used (Linux /proc). bench/scale.py waits for them too."""

    def cpu(pid: int) -> float:
        fields = _stat(pid)
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    seen: dict[int, float] = {}
    for entry, cmdline in _own_processes():
        try:
            if b"ray::IDLE" in cmdline and loaded in (entry / "maps").read_text():
                seen[int(entry.name)] = cpu(int(entry.name))
        except OSError:
            continue
    time.sleep(settle)
    quiet = {}
    for pid, before in seen.items():
        try:
            if cpu(pid) == before:
                quiet[pid] = before
        except OSError:
            continue
    return quiet


def process_niceness(pid: int) -> int:
    """The nice value of a process (Linux /proc)."""
    return int(_stat(pid)[16])


def ray_data_actors() -> dict[int, str]:
    """This user's Ray Data per-cluster actors (its stats actor and the like), by pid."""
    found = {}
    for entry, cmdline in _own_processes():
        title = cmdline.split(b"\0")[0].decode(errors="replace")
        if title.startswith("ray::") and "Actor" in title and "MapWorker" not in title:
            found[int(entry.name)] = title.strip()
    return found


def ray_daemon_env(keys: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """`keys` of the environment of this process's Ray daemons (raylet, gcs_server), by program name."""
    found: dict[str, dict[str, str]] = {}
    for entry, cmdline in _own_processes():
        name = cmdline.split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1]
        try:
            if name not in ("raylet", "gcs_server") or not _descends_from(int(entry.name), os.getpid()):
                continue
            pairs = (item.partition(b"=") for item in (entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        env = {k.decode(): v.decode(errors="replace") for k, _, v in pairs}
        found[name] = {key: env.get(key, "") for key in keys}
    return found


def _descends_from(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        pid = int(_stat(pid)[1])
    return False


def warm_job(out: str, manifest: str, actors: int = 2, batch_size: int = 8, wait: float = 90) -> None:
    """On a private local Ray that preloads the pools' modules: a first job (it starts Ray Data's own
    per-cluster actors), then `RayImageEmbedder.warm()`, the warm workers awaited, and a second job;
    save the warm workers' pids, the second job's actors and both jobs' vectors with the local ones."""
    from vlmops.data.manifest import resolve_data
    from vlmops.models import load_model
    from vlmops.scale import RayImageEmbedder, connect
    from vlmops.scale.cluster import UNOBSERVED_ENV
    from vlmops.store.cache import EmbeddingCache
    from vlmops.store.embed import embed_images_cached, use_image_backend

    paths = [str(p) for p in resolve_data(manifest)["image"]]
    model = load_model("builtin:emoji-lit")
    local, _ = embed_images_cached(model, paths, EmbeddingCache(":memory:"), batch_size, progress=False)
    backend = RayImageEmbedder(actors, 1.0)
    with connect("local", num_cpus=actors, preload=True), use_image_backend(backend):
        first, _ = embed_images_cached(model, paths, EmbeddingCache(":memory:"), batch_size, progress=False)
        asked = backend.warm()
        deadline, ready = time.time() + wait, {}
        while len(ready) < actors and time.time() < deadline:
            ready = warm_idle_workers()
        second, _ = embed_images_cached(model, paths, EmbeddingCache(":memory:"), batch_size, progress=False)
        niceness = {str(pid): process_niceness(pid) for pid in ready}
        ray_data = {name: process_niceness(pid) for pid, name in ray_data_actors().items()}
        daemons = ray_daemon_env(tuple(UNOBSERVED_ENV))
        threads = sorted(thread.name for thread in threading.enumerate())
    np.savez(out, local=local, first=first, second=second)
    summary = {
        "asked": asked,
        "warm": sorted(ready),
        "actors": backend.stats.to_dict()["actors"],
        "niceness": niceness,  # of the warm pool workers
        "ray_data_niceness": ray_data,  # of Ray Data's own per-cluster actors
        "daemon_env": daemons,  # the private Ray's settings, as its raylet and GCS got them
        "driver_threads": threads,  # this process's, while connected
    }
    Path(out).with_suffix(".json").write_text(json.dumps(summary))


if __name__ == "__main__":
    crash_job(*sys.argv[1:4])
