"""Pool the rounds of several `bench/scale.py` runs of one data set and code: the 2-actor speed-up
over all of them, with 95 % bootstrap intervals, and the Ray overheads.

One run's few rounds cannot settle a speed-up near its target on a host whose speed drifts ±15 %
between rounds (issue 18: the emoji set's per-round ray1 / ray2 ranged 1.55-2.24 over sessions 16 and
17). Every run named must be of the same images and batch size; it is refused otherwise. Runs made with
`--ray-only` add their rounds to the speed-up; the overheads come from the runs that timed the local
path too.

    python bench/scale_pool.py bench/scale_rounds/emoji-*.json bench/scale_emoji.json
    python bench/scale_pool.py bench/scale_rounds/100k-*.json bench/scale_100k.json --json pooled.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scale import print_overheads, print_speedup, ray_overheads, speedup_summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="JSON files written by bench/scale.py --json")
    parser.add_argument("--json", type=Path, default=None, help="also write the pooled numbers here")
    return parser.parse_args(argv)


def pool(runs: list[dict]) -> dict:
    """Every round of `runs` (bench/scale.py results of one set and batch size) as one run's numbers."""
    kinds = {(run["images"], run["batch_size"], run.get("cold", False)) for run in runs}
    if len(kinds) != 1:
        raise ValueError(f"the runs differ in (images, batch size, cold): {sorted(kinds)}; pool one kind")
    names = dict.fromkeys(name for run in runs for name in run["seconds"])
    seconds = {name: [s for run in runs for s in run["seconds"].get(name, [])] for name in names}
    median = {name: statistics.median(values) for name, values in seconds.items()}
    # the overheads pair each round's ray and local seconds: only runs that timed both (not --ray-only)
    full = [run for run in runs if set(run["seconds"]) >= {"local1", "ray1", "local2", "ray2"}]
    full_seconds = {name: [s for run in full for s in run["seconds"][name]] for name in names}
    return {
        "images": runs[0]["images"],
        "runs": len(runs),
        "seconds": seconds,
        "median_seconds": median,
        **speedup_summary(seconds["ray1"], seconds["ray2"]),
        **(ray_overheads(full_seconds) if full else {}),
        "overhead_runs": len(full),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        result = pool([json.loads(path.read_text()) for path in args.runs])
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"scale_pool: cannot pool {', '.join(map(str, args.runs))}: {exc!r}")
    seconds = result["seconds"]
    rounds = sorted(one / two for one, two in zip(seconds["ray1"], seconds["ray2"], strict=True))
    print(f"{result['images']} images; {result['runs']} runs, {len(rounds)} rounds")
    print(f"each round's ray1 / ray2, sorted: {' '.join(f'{r:.2f}' for r in rounds)}")
    print_speedup(result)
    if result["overhead_runs"]:
        print_overheads(result, f"pooled over the {result['overhead_runs']} runs that timed both")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
