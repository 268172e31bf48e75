"""Pool actors at Ray's worker niceness (15) against vlmops' (0, `vlmops.scale.warm.POOL_NICENESS`).

Side by side in one private local Ray (as `bench/scale.py` starts it: Ray Data's actors up, warm
workers before each job, untimed), arms interleaved round by round: Ray's default, then vlmops', each
with 1 and 2 single-core actors, embedding the same images into a fresh in-memory store (all misses,
the file hashes given, so only the Ray job is timed). Per job: wall seconds, the actors' CPU ms per
image in their batches (`RayJobStats`), and how often each actor's compute thread (its busiest) was
switched out involuntarily since its worker started (/proc, read as results arrive; the warm worker's
imports are counted in both arms alike). Prints the medians and, per actor count, Ray default /
vlmops wall: above 1 means nice 0 is faster.

    python bench/pool_niceness.py                 # every emoji image, 4 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from scale import images, start_ray_data, warm_ray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ray_helpers import process_niceness  # tests/: the niceness the warm-worker test reads

ARMS = {"ray-default": None, "vlmops": 0}  # POOL_NICENESS of each arm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-lit")
    parser.add_argument("--data", default="emoji")
    parser.add_argument("--limit", type=int, default=0, help="first N distinct images (0: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def compute_thread(pid: int) -> tuple[int, int] | None:
    """(niceness, involuntary switches) of the process's busiest thread, or None once it is gone."""
    busiest = None
    try:
        nice = process_niceness(pid)
        for tid in os.listdir(f"/proc/{pid}/task"):
            lines = Path(f"/proc/{pid}/task/{tid}/sched").read_text().splitlines()
            fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines)}
            runtime = float(fields["se.sum_exec_runtime"])
            if busiest is None or runtime > busiest[0]:
                busiest = (runtime, int(fields["nr_involuntary_switches"]))
    except (OSError, KeyError, ValueError):
        return None
    return None if busiest is None else (nice, busiest[1])


def pool_actors() -> list[int]:
    """Pids of this user's embedding actors."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and b"EmbedActor" in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


def one_job(model, paths: list[str], keys: list[str], actors: int, batch: int) -> dict:
    """One timed Ray job: wall s, actor CPU ms/img, and each actor's (niceness, involuntary switches)."""
    from vlmops.scale import RayImageEmbedder
    from vlmops.store.cache import EmbeddingCache
    from vlmops.store.embed import embed_images_cached, use_image_backend

    seen: dict[int, tuple[int, int]] = {}

    class Watched(RayImageEmbedder):
        def embed_files(self, model, items, batch_size):
            for chunk in super().embed_files(model, items, batch_size):
                for pid in pool_actors():
                    seen[pid] = compute_thread(pid) or seen.get(pid, (0, 0))
                yield chunk

    backend = Watched(actors=actors, cpus_per_actor=1)
    with use_image_backend(backend):
        start = time.perf_counter()
        embed_images_cached(
            model, paths, EmbeddingCache(":memory:"), batch, progress=False, content_keys=keys
        )
        wall = time.perf_counter() - start
    stats = backend.stats.to_dict()["actors"]
    return {
        "wall_s": wall,
        "actor_cpu_ms_per_image": statistics.mean(a["cpu_ms_per_image"] for a in stats),
        "niceness": sorted({nice for nice, _ in seen.values()}),
        "involuntary_switches": sorted(switches for _, switches in seen.values()),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import vlmops.scale.warm as warm
    from vlmops.models import load_model
    from vlmops.scale import connect
    from vlmops.store.embed import content_sha256

    paths = images(args.data, args.limit)
    keys = [content_sha256(path) for path in paths]
    model = load_model(args.model)
    jobs: dict[str, list[dict]] = {f"{arm} ray{n}": [] for arm in ARMS for n in (1, 2)}
    with connect("local", num_cpus=2, preload=True) as cluster:
        start_ray_data()
        print(f"{len(paths)} images, {args.model}, batch {args.batch_size}; {cluster.describe()}", flush=True)
        for round_ in range(args.rounds):
            for arm, niceness in ARMS.items():
                warm.POOL_NICENESS = niceness
                for n in (1, 2):
                    warm_ray(n)
                    job = one_job(model, paths, keys, n, args.batch_size)
                    jobs[f"{arm} ray{n}"].append(job)
                    print(
                        f"round {round_ + 1} {arm:11s} ray{n}: {job['wall_s']:6.2f} s, actors "
                        f"{job['actor_cpu_ms_per_image']:.3f} CPU ms/img, nice {job['niceness']}, "
                        f"involuntary switches {job['involuntary_switches']}",
                        flush=True,
                    )
    median = {name: statistics.median(j["wall_s"] for j in runs) for name, runs in jobs.items()}
    print("\n| arm | median s [min-max] | actor CPU ms/img (median) |\n|---|---|---|")
    for name, runs in jobs.items():
        walls = [j["wall_s"] for j in runs]
        cpu = statistics.median(j["actor_cpu_ms_per_image"] for j in runs)
        print(f"| {name} | {median[name]:.2f} [{min(walls):.2f}-{max(walls):.2f}] | {cpu:.3f} |")
    ratios = {n: median[f"ray-default ray{n}"] / median[f"vlmops ray{n}"] for n in (1, 2)}
    for n, ratio in ratios.items():
        print(f"ray{n}: Ray's nice 15 / vlmops' nice 0 wall = {ratio:.3f}")
    result = {"images": len(paths), "rounds": args.rounds, "jobs": jobs, "median_s": median, "ratios": ratios}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
