"""Scaling of image embedding: the local path against Ray Data with 1 and 2 single-core actors.

Every configuration embeds the same images into a fresh in-memory store (all misses), with the same
model and batch size, and must give the same vectors (max |difference| printed). Configurations:
local with 1 torch thread and with 2; a private local Ray (127.0.0.1, `vlmops.scale.connect`) with 1
actor x 1 CPU and 2 actors x 1 CPU (`RayImageEmbedder`). Ray is started once, before any timing, with
Ray Data's per-cluster actors (`start_ray_data`) and its pool workers preloading ray.data and torch, as the
CLI's does (`connect(preload=True)`). Before each Ray job, untimed, `warm_ray` does what the CLI does
right after connecting: `RayImageEmbedder.warm()` (an idle worker per actor, `vlmops.scale.warm`) and
waits until those workers are up with their imports done (their CPU is printed: it is not in the job's).
Each Ray job's time includes creating its actors on those workers, loading the model in each and
everything after. `--cold` skips the warm-up and the preload: each job then starts a worker process per
actor and imports in it (the comparison before issue 18's warm workers; label its numbers so).
Rounds are interleaved (local1, ray1, local2, ray2, ...); the median over rounds is reported with the
min-max. Wall-clock ratios need a quiet machine; the diagnostics do not: each actor's CPU ms per image
and start-up CPU (from the actors, `RayImageEmbedder.stats`), the share of the time both actors were
busy at once, the CPU of every process (driver, raylet, gcs, actors; `proc_sampler`), and the speed-up
those CPU costs allow. Targets (issue 18): ray2 / ray1 speed-up >= 1.8; Ray at equal cores at most 10 % slower
than local (ray1 vs local1, ray2 vs local2). The speed-up comes with a 95 % bootstrap interval over the
rounds and what that interval decides (met, NOT met, or undecided where it spans the target);
`bench/scale_pool.py` pools the rounds of several runs.

    python bench/scale.py                      # first 3000 emoji images, 3 rounds
    python bench/scale.py --limit 0 --rounds 3 # every emoji image
    python bench/scale.py --limit 0 --rounds 70 --ray-only   # the speed-up alone, ray1 and ray2 in turns
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from proc_sampler import ProcSampler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ray_helpers import warm_idle_workers  # tests/: the same wait as the warm-worker test

SPEEDUP_TARGET = 1.8  # issue 18: 2 actors >= 1.8x one actor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-lit")
    parser.add_argument("--data", default="emoji")
    parser.add_argument("--limit", type=int, default=3000, help="first N distinct images (0: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="at least 3: every first round runs slow (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cold", action="store_true", help="no warm workers: each job starts its own")
    parser.add_argument(
        "--ray-only",
        action="store_true",
        help="only ray1 and ray2, in turns (ray1 first in odd rounds, ray2 first in even ones): more rounds "
        "an hour for the speed-up, no overheads",
    )
    return parser.parse_args(argv)


def images(data: str, limit: int) -> list[str]:
    """Distinct image files (by content) of the data set, the first `limit` of them."""
    from vlmops.data.manifest import resolve_data

    frame = resolve_data(data)
    if "sha256" in frame:
        frame = frame.drop_duplicates("sha256")
    paths = [str(p) for p in frame["image"]]
    return paths[:limit] if limit else paths


def time_local(model, paths: list[str], threads: int, batch: int):
    """Seconds, vectors and process CPU seconds of the local path with `threads` torch threads."""
    import torch

    from vlmops.store.cache import EmbeddingCache
    from vlmops.store.embed import embed_images_cached

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        vectors, _ = embed_images_cached(model, paths, EmbeddingCache(":memory:"), batch, progress=False)
        return time.perf_counter() - start, vectors, time.process_time() - cpu
    finally:
        torch.set_num_threads(saved)


def time_ray(model, paths: list[str], actors: int, batch: int):
    """Seconds, vectors, seconds to the first vector (actor start and model load) and the actors' own
    report (`RayImageEmbedder.stats`) of a Ray Data job with `actors` actors of 1 CPU (Ray connected)."""
    from vlmops.scale import RayImageEmbedder
    from vlmops.store.cache import EmbeddingCache
    from vlmops.store.embed import embed_images_cached, use_image_backend

    first: list[float] = []

    class Timed(RayImageEmbedder):
        def embed_files(self, model, items, batch_size):
            for chunk in super().embed_files(model, items, batch_size):
                first.append(first[0] if first else time.perf_counter())
                yield chunk

    backend = Timed(actors=actors, cpus_per_actor=1)
    with use_image_backend(backend):
        start = time.perf_counter()
        vectors, _ = embed_images_cached(model, paths, EmbeddingCache(":memory:"), batch, progress=False)
        return time.perf_counter() - start, vectors, first[0] - start, backend.stats.to_dict()


def warm_ray(actors: int, wait: float = 60.0) -> dict:
    """Untimed, before a Ray job: `RayImageEmbedder.warm()` for `actors` actors and the wait until that
    many idle workers are up with their imports done; the wall seconds and those workers' CPU seconds."""
    from vlmops.scale import RayImageEmbedder

    start = time.perf_counter()
    asked = RayImageEmbedder(actors=actors, cpus_per_actor=1).warm()
    ready: dict[int, float] = {}
    while asked and len(ready) < actors and time.perf_counter() - start < wait:
        ready = warm_idle_workers()
    return {"workers": len(ready), "wall_s": time.perf_counter() - start, "cpu_s": sum(ready.values())}


class _Noop:
    """A Ray Data actor that does nothing (for `start_ray_data`)."""

    def __call__(self, batch):
        return batch


def start_ray_data() -> None:
    """Start Ray Data's per-cluster actors (its stats, actor-location, autoscaling and usage actors, a
    worker process each, ~3 CPU s in all) with a one-row actor-pool job, so that they count as part of
    starting Ray (done once, before any timing) and not as part of whichever job came first."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    pool = ray.data.ActorPoolStrategy(size=1)
    # from_items, not range: a read task would leave a task worker behind, idle until the first timed
    # job's actors need its room, when it exits there (0.15-0.3 CPU s of that job; issue 18)
    one_row = ray.data.from_items([{"x": 0}])
    one_row.map_batches(_Noop, compute=pool, batch_size=None, num_cpus=1).materialize()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import numpy as np

    from vlmops.models import load_model
    from vlmops.scale import connect

    paths = images(args.data, args.limit)
    model = load_model(args.model)
    configs = ["ray1", "ray2"] if args.ray_only else ["local1", "ray1", "local2", "ray2"]
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    to_first: dict[str, list[float]] = {"ray1": [], "ray2": []}
    diagnostics: dict[str, list[dict]] = {name: [] for name in seconds}
    reference, worst = None, 0.0
    warmed: dict[str, list[dict]] = {"ray1": [], "ray2": []}
    cluster_start = time.perf_counter()
    with connect("local", num_cpus=2, preload=not args.cold) as cluster:
        start_ray_data()
        cluster_start = time.perf_counter() - cluster_start
        mode = "cold: no warm workers" if args.cold else "warm workers (untimed warm-up before each Ray job)"
        print(
            f"{len(paths)} images, {args.model}, batch {args.batch_size}; {cluster.describe()}; {mode}; "
            f"Ray + Ray Data's actors started in {cluster_start:.1f} s",
            flush=True,
        )
        for round_ in range(args.rounds):
            for name in configs[::-1] if args.ray_only and round_ % 2 else configs:
                cores = int(name[-1])
                note = ""
                if name.startswith("ray") and not args.cold:
                    warmed[name].append(warm_ray(cores))
                sampler = ProcSampler()
                sampler.start()
                if name.startswith("local"):
                    took, vectors, cpu = time_local(model, paths, cores, args.batch_size)
                    note = f"  CPU {1000 * cpu / len(paths):.2f} ms/img"
                    diagnostics[name].append({"cpu_ms_per_image": round(1000 * cpu / len(paths), 3)})
                else:
                    took, vectors, first, stats = time_ray(model, paths, cores, args.batch_size)
                    to_first[name].append(first)
                    note = f"  (first vector after {first:.1f} s: actor start + model load)"
                    if warmed[name]:
                        w = warmed[name][-1]
                        note += f"  [untimed warm-up before: {w['workers']} workers, {w['wall_s']:.1f} s, "
                        note += f"{w['cpu_s']:.1f} CPU s]"
                    diagnostics[name].append(stats)
                sampler.stop()
                seen = sampler.summary()
                diagnostics[name][-1]["cpu_s_by_process"] = seen["cpu_s_by_role"]
                diagnostics[name][-1]["actor_busy_threads"] = seen.get("actor_busy_threads", [])
                seconds[name].append(took)
                reference = vectors if reference is None else reference
                worst = max(worst, float(np.abs(vectors - reference).max()))
                rate = len(paths) / took
                print(f"round {round_ + 1} {name:7s} {took:7.1f} s  {rate:6.1f} img/s{note}", flush=True)
    median = {name: statistics.median(v) for name, v in seconds.items()}
    result = {
        "images": len(paths),
        "model": args.model,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "seconds": seconds,
        "median_seconds": median,
        "seconds_to_first_vector": to_first,
        "cold": args.cold,
        "cluster_start_s": cluster_start,
        "warm_up_before_job": warmed,
        "ray_only": args.ray_only,
        **speedup_summary(seconds["ray1"], seconds["ray2"]),
        **({} if args.ray_only else ray_overheads(seconds)),
        "max_abs_diff": worst,
        "diagnostics": diagnostics,
        "derived": derived(diagnostics, len(paths)),
        "loadavg": os.getloadavg(),
    }
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def speedup_summary(ray1: list[float], ray2: list[float]) -> dict:
    """The 2-actor speed-up from each round's ray1 and ray2 seconds: the ratio of the medians, the paired
    one (the median of each round's ray1 / ray2, a minute apart: steadier where the host's speed drifts
    over minutes, +-15 % between rounds on sessions 16 and 17's host), a 95 % bootstrap interval for each
    (scipy, rounds resampled whole) and how many rounds reached the target on their own."""
    import numpy as np
    from scipy.stats import bootstrap

    one, two = np.asarray(ray1, dtype=float), np.asarray(ray2, dtype=float)
    ratios = one / two
    out = {
        "speedup_ray2_over_ray1": float(np.median(one) / np.median(two)),
        "speedup_ray2_over_ray1_paired": float(np.median(ratios)),
        "rounds_at_target": int((ratios >= SPEEDUP_TARGET).sum()),
    }
    if len(ratios) >= 3:  # an interval from fewer rounds says nothing
        rng = np.random.default_rng(0)  # the same interval for the same rounds
        walls = bootstrap(
            (one, two),
            lambda a, b: np.median(a) / np.median(b),
            paired=True,
            vectorized=False,
            n_resamples=10_000,
            method="percentile",
            rng=rng,
        ).confidence_interval
        paired = bootstrap(
            (ratios,), np.median, n_resamples=10_000, method="percentile", rng=rng
        ).confidence_interval
        out["speedup_ci95"] = [float(walls.low), float(walls.high)]
        out["speedup_paired_ci95"] = [float(paired.low), float(paired.high)]
    return out


OVERHEAD_KEYS = ((1, "ray_overhead_1_core"), (2, "ray_overhead_2_cores"))  # cores, result key


def ray_overheads(seconds: dict[str, list[float]]) -> dict[str, float]:
    """Ray's time over the local path's at equal cores, from each configuration's seconds per round: the
    ratio of the medians, and paired (the median of each round's ray / local, seconds apart)."""
    out = {}
    for cores, key in OVERHEAD_KEYS:
        ray, local = seconds[f"ray{cores}"], seconds[f"local{cores}"]
        out[key] = statistics.median(ray) / statistics.median(local) - 1
        out[f"{key}_paired"] = statistics.median(r / q for r, q in zip(ray, local, strict=True)) - 1
    return out


def print_overheads(result: dict, how: str) -> None:
    """The Ray-overhead lines at 1 and 2 cores against the target (at most 10 % slower than local)."""
    for cores, key in OVERHEAD_KEYS:
        overhead, paired = result[key], result[f"{key}_paired"]
        verdict = "met" if overhead <= 0.10 else "NOT met"
        print(
            f"Ray overhead at {cores} core(s) vs local ({how}): {100 * overhead:+.1f} % "
            f"(target <= +10 %: {verdict});  paired: {100 * paired:+.1f} %"
        )


def decided(ci: list[float] | None, target: float = SPEEDUP_TARGET) -> str:
    """Whether the rounds decide a speed-up target: its whole 95 % interval above, below, or neither."""
    if not ci:
        return "too few rounds to say"
    if ci[0] >= target:
        return "met"
    return "NOT met" if ci[1] < target else "undecided: the interval spans the target"


def derived(diagnostics: dict[str, list[dict]], images: int) -> dict:
    """Machine-load-free readings of the diagnostics: CPU per image of each path, the Ray job's whole
    CPU (actors, driver, Ray's own processes) against the local path's, and the speed-up the actors'
    CPU costs allow on 2 free cores (start-up paid once per actor, in parallel, then the work split)."""

    def median(name, fn):
        values = [fn(d) for d in diagnostics.get(name, [])]
        return statistics.median(values) if values else float("nan")

    local = median("local1", lambda d: d["cpu_ms_per_image"])  # nan in a --ray-only run
    out: dict = {"local1_cpu_ms_per_image": local}
    lines = []
    for name in ("ray1", "ray2"):
        if not diagnostics[name]:
            continue
        actor_ms = median(name, lambda d: statistics.mean(a["cpu_ms_per_image"] for a in d["actors"]))
        startup = median(name, lambda d: max(a["startup_cpu_s"] for a in d["actors"]))
        total = median(name, lambda d: sum(d["cpu_s_by_process"].values()))
        busy = median(name, lambda d: d["all_busy_fraction"])
        others = median(name, lambda d: sum(v for k, v in d["cpu_s_by_process"].items() if k != "actor"))
        gaps = median(name, lambda d: max(d["busy_span_s"] - a["busy_s"] for a in d["actors"]))
        out[name] = {
            "actor_cpu_ms_per_image": actor_ms,
            "startup_cpu_s": startup,
            "job_cpu_s": total,
            "all_busy_fraction": busy,
            "non_actor_cpu_s": others,  # driver (with the sampler), raylet, gcs, Ray's other processes
            "actor_idle_s": gaps,  # most of any actor: not in a task while another was (start, gaps, end)
        }
        against = ""
        if "local1" in diagnostics:
            against = f" (local1 {local:.2f}: {100 * (actor_ms / local - 1):+.1f} %)"
        lines.append(
            f"{name}: actors {actor_ms:.2f} CPU ms/img in batches{against}; start-up {startup:.1f} CPU s per "
            f"actor; whole job "
            f"{1000 * total / images:.2f} CPU ms/img (all processes); all actors busy {100 * busy:.0f} %; "
            f"non-actor CPU {others:.1f} s; an actor out of a task while another worked up to {gaps:.1f} s"
        )
    if diagnostics["ray1"] and diagnostics["ray2"]:
        per_image = out["ray1"]["actor_cpu_ms_per_image"] / 1000
        one = out["ray1"]["startup_cpu_s"] + images * per_image
        two = out["ray2"]["startup_cpu_s"] + images * out["ray2"]["actor_cpu_ms_per_image"] / 1000 / 2
        out["cpu_bound_speedup_ray2_over_ray1"] = one / two
        out["cpu_bound_speedup_without_startup"] = per_image / (out["ray2"]["actor_cpu_ms_per_image"] / 2000)
        lines.append(
            f"speed-up 2 actors / 1 that the CPU costs allow on 2 free cores: {one / two:.2f} with start-up "
            f"({images} images), {out['cpu_bound_speedup_without_startup']:.2f} without"
        )
    out["lines"] = lines
    return out


def print_speedup(result: dict) -> None:
    """The 2-actor speed-up lines: each estimate, its 95 % interval and what the interval decides."""
    speedup, rounds = result["speedup_ray2_over_ray1"], len(result["seconds"]["ray1"])
    verdict = "met" if speedup >= SPEEDUP_TARGET else "NOT met"
    print(f"ray 2 actors / 1 actor speed-up: {speedup:.2f} (target >= {SPEEDUP_TARGET}: {verdict})")
    print(f"  paired (median of each round's ray1 / ray2): {result['speedup_ray2_over_ray1_paired']:.2f}")
    for name, key in (("medians", "speedup_ci95"), ("paired", "speedup_paired_ci95")):
        ci = result.get(key)
        span = f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-"
        print(f"  95 % interval over the {rounds} rounds, {name}: {span}; the target: {decided(ci)}")
    print(f"  rounds that reached {SPEEDUP_TARGET} on their own: {result['rounds_at_target']} of {rounds}")


def report(result: dict) -> None:
    """The table and the verdicts against the targets."""
    print("\n| config | median s [min-max] | img/s |\n|---|---|---|")
    for name, values in result["seconds"].items():
        med = result["median_seconds"][name]
        print(f"| {name} | {med:.1f} [{min(values):.1f}-{max(values):.1f}] | {result['images'] / med:.1f} |")
    print_speedup(result)
    how = "cold: each job starts its workers" if result["cold"] else "warm workers, their warm-up untimed"
    if "ray_overhead_1_core" in result:
        print_overheads(result, how)
    print(f"max |vector difference| between configurations: {result['max_abs_diff']:.2e}")
    print("\nDiagnostics (CPU, not wall: meaningful on a shared machine; per round):")
    for name, rounds in result["diagnostics"].items():
        for i, d in enumerate(rounds, 1):
            procs = ", ".join(f"{k} {v:.1f}" for k, v in sorted(d["cpu_s_by_process"].items()))
            if name.startswith("local"):
                print(f"  {name} r{i}: CPU {d['cpu_ms_per_image']:.2f} ms/img; CPU s by process: {procs}")
                continue
            actors = "; ".join(
                f"pid {a['pid']:.0f}: {a['images']:.0f} img, {a['cpu_ms_per_image']:.2f} CPU ms/img, "
                f"{a['cpu_s'] / a['busy_s']:.2f} cores while in a batch ({a['busy_s']:.1f} s), "
                f"start-up {a['startup_cpu_s']:.1f} CPU s / {a['startup_wall_s']:.2f} s, "
                f"{a['startup_imports']} modules imported after the preload"
                for a in d["actors"]
            )
            actors += f"; threads doing work per actor {d['actor_busy_threads']}"
            print(
                f"  {name} r{i}: {actors}; all actors busy {100 * d['all_busy_fraction']:.0f} % of the "
                f"{d['busy_span_s']:.1f} s they worked; CPU s by process: {procs}"
            )
    for line in result["derived"]["lines"]:
        print(line)


if __name__ == "__main__":
    main()
