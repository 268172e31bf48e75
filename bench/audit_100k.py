"""The full audit of a large augmented emoji set, with wall and process CPU seconds per stage.

The set: the emoji records (`--data emoji`, 15170 images) and then augmented copies of them, cycling
over the records, until ``--n`` rows. A copy is the source image through the training augmentation
(`vlmops.models.training.augment`: random scale, shift and blur, brightness/contrast/saturation
jitter; ``bench/ann_recall.py`` augments embedding vectors, not image files, so it cannot make these),
written as a 64x64 RGB PNG, with the source's texts, label, split and attributes. It is cached under
``--cache`` (default ``~/.cache/vlmops/bench-audit``), so a rerun only audits.

The audit is the library call `vlmops audit --data <manifest> --model <model>` makes (every check,
the default --ann-threshold), into a fresh embedding store, so every image is embedded. Stages:
reading the manifest, hashing the files, then the audit's own ``timings`` (image scan, embedding,
label views, each check), each with its peak resident memory (`vlmops.timing.StageTimer`: the
kernel's high-water mark reset as the stage starts) and the memory held when it ends. CPU seconds
count every thread of this process; on a shared machine they, not the wall seconds, are the cost of
a stage.

    python bench/audit_100k.py --n 5000 --json /tmp/audit_5k.json      # a try-out
    nice python bench/audit_100k.py --json bench/audit_100k.json        # 100k (20-40 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows of the set (default: %(default)s)")
    parser.add_argument("--model", default="builtin:emoji-lit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jitter", type=float, default=0.2, help="colour jitter of the copies")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/vlmops/bench-audit").expanduser())
    parser.add_argument("--checks", default="all")
    parser.add_argument("--ann-threshold", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def build_set(n: int, seed: int, jitter: float, cache: Path) -> Path:
    """The manifest of the `n`-row augmented emoji set, built once under `cache`."""
    import pandas as pd
    import torch

    from vlmops.data.manifest import resolve_data
    from vlmops.models.training import AugmentConfig, augment, load_pixels

    root = cache / f"emoji-aug-n{n}-seed{seed}-jitter{jitter:g}"
    manifest = root / "manifest.parquet"
    if manifest.is_file():
        return manifest
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    emoji = resolve_data("emoji")
    keep = ["id", "image", "texts", "label", "split", "vendor", "skin_tone", "gender", "source", "licence"]
    base = emoji[keep].reset_index(drop=True)
    rows = [dict(r) for r in base.head(n).to_dict(orient="records")]
    extra = np.arange(len(base), n) % len(base)  # source record of each copy
    generator = torch.Generator().manual_seed(seed)
    config = AugmentConfig(jitter=jitter)
    start = time.perf_counter()
    from PIL import Image

    for lo in range(0, len(extra), 2048):
        sources = extra[lo : lo + 2048]
        pixels = load_pixels([base["image"][i] for i in sources], 64).float() / 127.5 - 1.0
        out = ((augment(pixels, generator, config) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        for j, (src, image) in enumerate(zip(sources, out.permute(0, 2, 3, 1).numpy(), strict=True)):
            k = len(base) + lo + j
            path = root / f"{k // 10_000:02d}" / f"{k:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            row = rows[src]
            rows.append({**row, "id": f"aug{k:06d}:{row['id']}", "image": str(path)})
        print(
            f"  built {len(base) + lo + len(sources)} / {n} ({time.perf_counter() - start:.0f} s)", flush=True
        )
    frame = pd.DataFrame(rows)
    frame["texts"] = [list(t) for t in frame["texts"]]
    frame.to_parquet(root / "manifest.tmp.parquet")
    (root / "manifest.tmp.parquet").rename(manifest)  # only a complete set is reused
    return manifest


def run(manifest: Path, model_uri: str, checks: str, ann_threshold: int | None, store: Path) -> dict:
    """The audit as `vlmops audit` runs it, into a fresh store: report dict with timings of every stage."""
    from vlmops.audit.run import AuditInputs, parse_checks, run_audit
    from vlmops.data.manifest import attribute_columns, resolve_data
    from vlmops.evaluate.slices import default_slice_fields
    from vlmops.evaluate.task import DEFAULT_TEMPLATES, tier_names_for
    from vlmops.evaluate.tiers import tiers_of
    from vlmops.models import load_model
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import content_sha256
    from vlmops.timing import StageTimer

    store.unlink(missing_ok=True)
    timer = StageTimer()
    with timer.stage("load_manifest"):
        frame = resolve_data(str(manifest))
    with timer.stage("hashing"):
        hashes = [content_sha256(p) for p in frame["image"]]
    model = load_model(model_uri)
    labels = [x for x in frame["label"] if x is not None]
    tier_names = tier_names_for("other", tiers_of(labels))
    fields = default_slice_fields(frame, attribute_columns(frame))
    with open_cache(str(store)) as cache:
        inputs = AuditInputs(
            frame, hashes, model, cache, False, prompt_template=DEFAULT_TEMPLATES["emoji"][0]
        )
        report = run_audit(
            inputs,
            parse_checks(checks),
            {"spec": str(manifest), "n": len(frame)},
            fields,
            tier_names,
            ann_threshold=ann_threshold,
            on_check=lambda name: print(f"  check {name} ({time.strftime('%H:%M:%S')})", flush=True),
        )
    payload = report.to_dict()
    payload["timings"] = {**timer.stages, **payload["timings"]}
    return payload


def peak_gib(timings: dict) -> float:
    """The run's peak RSS in GiB: the largest stage peak (the timer resets the kernel's high-water mark at
    each stage, which ``ru_maxrss`` reads too, so that alone may miss an earlier stage's peak)."""
    stages = [t.get("peak_rss_mib", 0.0) / 1024 for t in timings.values()]
    return round(max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, *stages]), 2)


def main(argv: list[str] | None = None) -> dict:
    """Build (or reuse) the set, audit it, print and return the per-stage costs."""
    args = parse_args(argv)
    start = time.perf_counter()
    manifest = build_set(args.n, args.seed, args.jitter, args.cache)
    print(f"set: {manifest} ({time.perf_counter() - start:.0f} s to build or find)", flush=True)
    load_before = os.getloadavg()
    payload = run(manifest, args.model, args.checks, args.ann_threshold, manifest.parent / "store.sqlite")
    n = payload["n"] if "n" in payload else payload["data"]["n"]
    result = {
        "n": n,
        "model": args.model,
        "checks": payload["checks_run"],
        "ann_threshold": payload["ann_threshold"],
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "shared": True,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "timings": payload["timings"],
        "summary": payload["summary"],
        "peak_rss_gib": peak_gib(payload["timings"]),
        "command": "python bench/audit_100k.py " + " ".join(argv or __import__("sys").argv[1:]),
    }
    print(f"\n{n} images, {args.model}; wall seconds from a shared 2-core machine, CPU seconds primary")
    print("| stage | CPU s | wall s | CPU ms / image | peak RSS GiB | RSS at end GiB |")
    print("|---|---|---|---|---|---|")
    for name, t in result["timings"].items():
        peak, end = t.get("peak_rss_mib", float("nan")) / 1024, t.get("rss_end_mib", float("nan")) / 1024
        print(
            f"| {name} | {t['cpu_s']:.1f} | {t['wall_s']:.1f} | {1000 * t['cpu_s'] / n:.2f} "
            f"| {peak:.2f} | {end:.2f} |"
        )
    total_cpu = sum(t["cpu_s"] for t in result["timings"].values())
    total_wall = sum(t["wall_s"] for t in result["timings"].values())
    print(
        f"| total | {total_cpu:.1f} | {total_wall:.1f} | {1000 * total_cpu / n:.2f} "
        f"| {result['peak_rss_gib']:.2f} | |"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
