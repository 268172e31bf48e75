"""glibc's defaults against `vlmops.models.allocator.keep_freed_memory`: CPU, kernel time and page faults
per image of the builtin image tower, one process alone and two at once (what 2 Ray actors are).

Each job is a fresh Python process (as each Ray actor is) that loads the model, embeds the same images
`--reps` times in batches with one torch thread, and reports its CPU ms per image, the kernel's share
of it, and its minor page faults per image over the repetitions after the first (the first pays the
heap's growth in both arms). Arms are interleaved round by round: glibc's defaults
(VLMOPS_KEEP_FREED_MEMORY=0), then vlmops' setting, each with one process and then two processes
started together on the same images. Prints the medians and, per layout, defaults / vlmops CPU per
image: above 1 means keeping freed memory is cheaper.

    python bench/malloc_faults.py                  # 3,000 emoji images, 3 reps, 5 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = {"glibc-defaults": "0", "vlmops": "1"}  # VLMOPS_KEEP_FREED_MEMORY of each arm
LAYOUTS = {"alone": 1, "two at once": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-lit")
    parser.add_argument("--data", default="emoji")
    parser.add_argument("--limit", type=int, default=3000, help="first N distinct images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3, help="passes over the images per process")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child(args: argparse.Namespace) -> dict:
    """One job, in this process: the model loaded, the images embedded `reps` times."""
    import resource

    import torch

    from scale import images
    from vlmops.data.images import load_image
    from vlmops.models import load_model
    from vlmops.models.allocator import keep_freed_memory
    from vlmops.models.base import batched

    torch.set_num_threads(1)
    paths = images(args.data, args.limit)
    model = load_model(args.model)
    passes = []
    for _ in range(args.reps):
        before, cpu = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
        for batch in batched(paths, args.batch_size):
            model.embed_images([load_image(path) for path in batch])
        after = resource.getrusage(resource.RUSAGE_SELF)
        kernel, faults = after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt
        passes.append((time.process_time() - cpu, kernel, faults))
    later = passes[1:] or passes
    count = len(paths) * len(later)
    return {
        "kept": keep_freed_memory(),
        "cpu_ms_per_image": 1000 * sum(p[0] for p in later) / count,
        "kernel_ms_per_image": 1000 * sum(p[1] for p in later) / count,
        "faults_per_image": sum(p[2] for p in later) / count,
    }


def run_jobs(argv: list[str], keep: str, processes: int) -> list[dict]:
    """`processes` child jobs started together with VLMOPS_KEEP_FREED_MEMORY=`keep`; their reports."""
    env = {**os.environ, "VLMOPS_KEEP_FREED_MEMORY": keep}
    command = [sys.executable, __file__, *argv, "--child"]
    jobs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    reports = []
    for job in jobs:
        out, _ = job.communicate()
        if job.returncode != 0:
            raise SystemExit(f"a child job failed (exit {job.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return {}
    runs: dict[str, list[dict]] = {f"{arm} {layout}": [] for arm in ARMS for layout in LAYOUTS}
    for round_ in range(args.rounds):
        for layout, processes in LAYOUTS.items():
            for arm, keep in ARMS.items():
                reports = run_jobs(argv, keep, processes)
                runs[f"{arm} {layout}"] += reports
                cpu = ", ".join(f"{r['cpu_ms_per_image']:.3f}" for r in reports)
                print(f"round {round_ + 1} {arm:14s} {layout:11s} CPU ms/img {cpu}", flush=True)
    summary = {
        name: {key: statistics.median(r[key] for r in reports) for key in reports[0] if key != "kept"}
        for name, reports in runs.items()
    }
    print("\n| arm | CPU ms/img | kernel ms/img | page faults/img |\n|---|---|---|---|")
    for name, s in summary.items():
        cpu, kernel, faults = s["cpu_ms_per_image"], s["kernel_ms_per_image"], s["faults_per_image"]
        print(f"| {name} | {cpu:.3f} | {kernel:.3f} | {faults:.1f} |")
    ratios = {}
    for layout in LAYOUTS:
        before, after = summary[f"glibc-defaults {layout}"], summary[f"vlmops {layout}"]
        ratios[layout] = before["cpu_ms_per_image"] / after["cpu_ms_per_image"]
        print(f"{layout}: glibc defaults / vlmops CPU per image = {ratios[layout]:.3f}")
    for arm in ARMS:
        alone, two = (summary[f"{arm} {layout}"]["cpu_ms_per_image"] for layout in LAYOUTS)
        print(f"{arm}: two at once / alone CPU per image = {two / alone:.3f}")
    result = {"args": vars(args) | {"json": None}, "runs": runs, "summary": summary, "ratios": ratios}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
