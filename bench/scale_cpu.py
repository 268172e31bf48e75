"""Where the CPU of a Ray embedding job goes outside its actors: the driver per thread, each Ray process.

Starts a private local Ray (2 CPUs) and Ray Data's per-cluster actors as `bench/scale.py` does, then runs
the same Ray job (`scale.time_ray`: all misses into a fresh in-memory store) `--reps` times, printing
per job: wall, the driver's CPU per thread (main, Ray Data's executor, `iter_batches`' prefetcher, the
sampler, Ray's C++ threads; read from /proc/self/task every 0.5 s, so threads that end mid-job count),
the CPU of each role (`proc_sampler`) and of each of Ray's other processes, the tasks, and each actor's
CPU per image and cores while in a batch. CPU seconds, not the wall, are the yardstick on a shared
machine (issue 18).

    AUG=~/.cache/vlmops/bench-audit/emoji-aug-n100000-seed0-jitter0.2/manifest.parquet
    python bench/scale_cpu.py --data $AUG --limit 20000 --reps 2
"""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path

import proc_sampler
import scale

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[tuple[int, str], float]:
    """CPU seconds of each thread of this process by (native id, Python name or comm)."""
    names = {t.native_id: t.name.split("-dataset")[0] for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[(int(tid), names.get(int(tid), comm))] = (int(fields[11]) + int(fields[12])) / TICK
    return out


class ThreadWatch(threading.Thread):
    """Keeps the last CPU seen of every thread of this process until `stop()`."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="thread-watch")
        self.first, self.last, self._halt = thread_cpu(), {}, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.last.update(thread_cpu())
            self._halt.wait(0.5)

    def stop(self) -> dict[str, float]:
        """CPU seconds per thread name while watched."""
        self._halt.set()
        self.join()
        self.last.update(thread_cpu())
        used: dict[str, float] = {}
        for key, cpu in self.last.items():
            used[key[1]] = used.get(key[1], 0.0) + cpu - self.first.get(key, 0.0)
        return dict(sorted(used.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="emoji")
    parser.add_argument("--limit", type=int, default=20000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    from vlmops.models import load_model
    from vlmops.scale import connect

    paths = scale.images(args.data, args.limit)
    model = load_model("builtin:emoji-lit")
    with connect("local", num_cpus=2):
        scale.start_ray_data()
        for rep in range(args.reps):
            watch, sampler = ThreadWatch(), proc_sampler.ProcSampler()
            watch.start()
            sampler.start()
            took, _, first, stats = scale.time_ray(model, paths, args.actors, 64)
            sampler.stop()
            threads = watch.stop()
            print(f"rep {rep + 1}: {len(paths)} images, {args.actors} actors, wall {took:.1f} s, ", end="")
            report(first, threads, sampler, stats)


def report(first: float, threads: dict, sampler: proc_sampler.ProcSampler, stats: dict) -> None:
    """One job's lines: driver threads, roles, Ray's other processes, tasks and actors."""
    roles = sampler.summary()["cpu_s_by_role"]
    others = sum(v for k, v in roles.items() if k != "actor")
    print(f"first vector {first:.1f} s")
    print("  driver threads:", ", ".join(f"{k} {v:.2f}" for k, v in threads.items() if v >= 0.02))
    print(f"  CPU s by role: {roles}; outside the actors {others:.2f}")
    for pid, points in sampler.samples.items():
        used = points[-1][1] - points[0][1]
        if sampler.roles[pid] == "ray-other" and used >= 0.05:
            name = proc_sampler._cmdline(str(pid))[:60].strip() or "(exited)"
            print(f"    ray-other {used:.2f}: {name}")
    actors = stats["actors"]
    each = ", ".join(
        f"{a['cpu_ms_per_image']:.2f} CPU ms/img at {a['cpu_s'] / a['busy_s']:.2f} cores" for a in actors
    )
    tasks = sum(a["batches"] for a in actors)
    idle = max(stats["busy_span_s"] - a["busy_s"] for a in actors)  # its start, gaps and the tail
    print(f"  tasks {tasks:.0f}; actors {each}; all busy {100 * stats['all_busy_fraction']:.0f} %", end="")
    print(
        f" of {stats['busy_span_s']:.1f} s; an actor out of a task while another worked {idle:.2f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
