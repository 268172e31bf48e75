"""On paper: how long the full audit of 1M and 10M images would take on N nodes, derived from the
per-stage CPU seconds that ``bench/audit_100k.py --json`` measured (and, if given, the Ray actors' CPU
per image from ``bench/scale.py --json``). Nothing here is measured at 1M or 10M.

Model. Each stage's measured CPU seconds at n0 images are scaled to n as (n / n0) ** exponent:
- exponent 1, spread over every core of every node: the per-image stages (hashing, the image scan,
  the embedding). Today only the embedding runs on Ray (`RayImageEmbedder`); hashing and the scan
  running on the nodes too is an assumption of this table, marked in its header.
- exponent 1, on the driver node: the per-record checks (provenance, quality, leakage, balance, PII,
  poisoning: per-class statistics and clustering, taken as linear).
- exponent 1, 1.5 or 2 (three columns), on the driver node: the stages whose cost is neighbour
  search (label views, labels, alignment's caption swaps, embedding near-duplicates). Above the ANN
  threshold they use a faiss IVF index with nlist = 4 sqrt(n) lists and nprobe = max(16, nlist / 32)
  (`vlmops.audit.neighbours`): each query then scans about n / 32 rows, so n queries cost ~n^2 / 32,
  exponent 2 in the limit; were nprobe held at 16, a query would scan 4 sqrt(n) rows: n^1.5. From 30k
  to 100k records (`--smaller bench/audit_30k.json`, the index forced at 30k, used by default at
  100k) these stages measured 1.0 (label views), 1.5 (alignment) and 2.0 (embedding near-duplicates),
  so 1 is the lower case and 2 the upper (the whole stage scaled so, its linear parts too). (The
  labels and poisoning checks' exponents between those runs mean nothing: issue 18 item 3 made them
  cheaper in between.)
Memory: the driver's peak RSS, measured per stage (`StageTimer`'s ``peak_rss_mib``: each stage's own
peak, the kernel's high-water mark reset as it starts) and scaled linearly from the stage with the
largest peak, which is named. The dominant holders left after issue 18 item 3 are the label views'
(n, classes) float64 probability matrices (five kept: image, caption, zero-shot, two look-alike;
1,923 classes for emoji, 1.5 GiB each per 100k records: 7.7 GiB of the 100k run's 11.6 GiB peak),
linear in n at a fixed label set. (Before, the 100k run was killed by the kernel at 18.5 GiB: the
patch hasher kept every window hash.)
Driver-node stages are taken to use all `--cores` cores of that node (faiss and BLAS are threaded, the
Python parts are not: optimistic); per-image stages all cores of all nodes with no loss (the actor
start-up, ~2.5 CPU s per actor, is negligible at these sizes).

    python bench/sizing.py --audit bench/audit_100k.json --smaller bench/audit_30k.json \\
        --scale bench/scale_emoji.json --cores 16
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

PER_IMAGE = ("hashing", "image_scan", "embedding")
NEIGHBOURS = ("label_views", "labels", "alignment", "duplicates")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audit", type=Path, required=True, help="JSON of bench/audit_100k.py")
    parser.add_argument("--scale", type=Path, default=None, help="JSON of bench/scale.py (actor CPU/img)")
    parser.add_argument("--smaller", type=Path, default=None, help="a smaller run's JSON: measured exponents")
    parser.add_argument("--cores", type=int, default=16, help="cores per node (default: %(default)s)")
    parser.add_argument("--sizes", type=float, nargs="*", default=[1e6, 1e7])
    parser.add_argument("--nodes", type=int, nargs="*", default=[1, 4, 16])
    return parser.parse_args(argv)


def stage_costs(audit: dict, scale: dict | None) -> tuple[int, dict[str, float]]:
    """(n0, CPU seconds per stage at n0); the embedding from the Ray actors' CPU per image if given."""
    n0 = int(audit["n"])
    costs = {name: float(t["cpu_s"]) for name, t in audit["timings"].items()}
    if scale is not None:
        ms = scale["derived"]["ray1"]["actor_cpu_ms_per_image"]
        costs["embedding"] = n0 * ms / 1000  # one single-threaded actor's cost, as on the nodes
    return n0, costs


def project(n0: int, costs: dict[str, float], n: float, nodes: int, cores: int, exponent: float) -> dict:
    """CPU hours (per-image, driver) and wall hours of the audit of `n` images on `nodes` nodes."""
    spread = sum(c * (n / n0) for name, c in costs.items() if name in PER_IMAGE)
    driver = sum(
        c * (n / n0) ** (exponent if name in NEIGHBOURS else 1.0)
        for name, c in costs.items()
        if name not in PER_IMAGE
    )
    wall = spread / (nodes * cores) + driver / cores
    return {"spread_cpu_h": spread / 3600, "driver_cpu_h": driver / 3600, "wall_h": wall / 3600}


def table(args: argparse.Namespace, n0: int, costs: dict[str, float]) -> list[str]:
    """The Markdown table."""
    lines = [
        f"| images | nodes x {args.cores} cores | per-image stages CPU h (on all nodes) "
        "| driver stages CPU h (n^1 / n^1.5 / n^2) | wall h (n^1 / n^1.5 / n^2) "
        "| driver peak RSS, measured x n / n0 |",
        "|---|---|---|---|---|---|",
    ]
    for n in args.sizes:
        for nodes in args.nodes:
            runs = [project(n0, costs, n, nodes, args.cores, e) for e in (1.0, 1.5, 2.0)]
            peak = f"{args.peak_gib * n / n0:,.0f} GiB" if args.peak_gib else "?"
            peak += f" ({args.peak_stage})" if args.peak_stage else ""
            driver = " / ".join(f"{r['driver_cpu_h']:,.1f}" for r in runs)
            wall = " / ".join(f"{r['wall_h']:,.1f}" for r in runs)
            lines.append(
                f"| {n:,.0f} | {nodes} | {runs[0]['spread_cpu_h']:.1f} | {driver} | {wall} | {peak} |"
            )
    return lines


def peak_stage(audit: dict) -> tuple[str | None, float | None]:
    """(stage, GiB) of the largest per-stage peak RSS of a run; (None, its lifetime peak) for runs from
    before stages recorded their peaks."""
    peaks = {name: t["peak_rss_mib"] / 1024 for name, t in audit["timings"].items() if "peak_rss_mib" in t}
    if not peaks:
        return None, audit.get("peak_rss_gib")
    name = max(peaks, key=peaks.get)
    return name, peaks[name]


def main(argv: list[str] | None = None) -> list[str]:
    """Print the inputs and the table."""
    args = parse_args(argv)
    audit = json.loads(args.audit.read_text())
    scale = json.loads(args.scale.read_text()) if args.scale else None
    n0, costs = stage_costs(audit, scale)
    args.peak_stage, args.peak_gib = peak_stage(audit)
    print(f"inputs: CPU s per stage at n0 = {n0:,} ({args.audit}" + (f", {args.scale})" if scale else ")"))
    if args.peak_gib:
        print(
            f"  driver peak RSS at n0: {args.peak_gib:.2f} GiB"
            + (f" ({args.peak_stage})" if args.peak_stage else "")
        )
    for name, cost in costs.items():
        kind = "per image" if name in PER_IMAGE else "neighbours" if name in NEIGHBOURS else "per record"
        print(f"  {name}: {cost:.1f} CPU s ({kind})")
    if args.smaller:
        small = json.loads(args.smaller.read_text())
        n1, c1 = int(small["n"]), {k: float(t["cpu_s"]) for k, t in small["timings"].items()}
        print(f"measured exponents, CPU s from n = {n1:,} to {n0:,} (the model's in brackets):")
        for name, cost in audit["timings"].items():
            if c1.get(name, 0) > 0.5 and cost["cpu_s"] > 0.5:
                measured = math.log(cost["cpu_s"] / c1[name]) / math.log(n0 / n1)
                assumed = "1 / 1.5-2" if name in NEIGHBOURS else "1"
                print(f"  {name}: {measured:.2f} [{assumed}]")
    lines = table(args, n0, costs)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
