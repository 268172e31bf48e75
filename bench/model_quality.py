"""Quality bar of a model on the emoji data, plus image-tower throughput at batch 1 and 32.

Measured through the public protocol (`load_model`, `embed_images`, `embed_texts`) with the prompt
"an emoji of {name}" on base emoji (no skin-tone modifier):
  (a) new vendor: facebook images of train-split concepts, candidates = all base emoji names (bar 0.45)
  (b) unseen concepts: google+twitter images of test-split concepts, candidates = test names (bar 0.15)
plus OpenMoji (the strong style shift) and concept accuracy per skin tone on the new vendor.

    python bench/model_quality.py --model builtin:emoji-lit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def throughput(model, images, batch_size: int, seconds: float = 3.0) -> float:
    """Images per second of `model.embed_images` at a fixed batch size (best of repeated runs)."""
    batch = [images[i % len(images)] for i in range(batch_size)]
    model.embed_images(batch)  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        model.embed_images(batch)
        best = max(best, batch_size / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> int:
    """Print the quality table and throughput; exit 1 if a bar is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-lit")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.data.images import load_image
    from vlmops.evaluate.emoji_bar import quality_report
    from vlmops.models import load_model

    torch.set_num_threads(2)
    model = load_model(args.model)
    manifest = load_emoji_manifest()
    start = time.perf_counter()
    report = quality_report(model, manifest)
    seconds = time.perf_counter() - start
    print(f"model {model.info.version} ({args.model}); evaluation took {seconds:.1f} s")
    print(f"{'slice':42s} {'n':>6s} {'classes':>8s} {'top-1':>7s} {'top-5':>7s}")
    for key, row in report.items():
        if key != "bars":
            print(f"{key:42s} {row['n']:6d} {row['n_classes']:8d} {row['top1']:7.3f} {row['top5']:7.3f}")
    for key, bar in report["bars"].items():
        print(f"bar {key}: {bar['value']:.3f} >= {bar['threshold']}: {'PASS' if bar['passed'] else 'FAIL'}")
    images = [load_image(p) for p in manifest["image"].iloc[:32]]
    speed = {f"batch_{b}": throughput(model, images, b) for b in (1, 32)}
    print(f"image tower: {speed['batch_1']:.0f} images/s at batch 1, {speed['batch_32']:.0f} at batch 32")
    if args.json:
        args.json.write_text(
            json.dumps({"model": model.info.to_dict(), "report": report, "throughput": speed}, indent=2)
        )
    return 0 if all(bar["passed"] for bar in report["bars"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
