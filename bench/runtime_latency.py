"""CPU per image of builtin:emoji-lit under torch and under ONNX Runtime, one thread, by batch size.

What `--runtime auto` chooses between in `vlmops serve` (one model thread per worker process): the
same 64-px emoji PNGs, decoded once, embedded in batches of 1, 8 and 32 for `--seconds` each.
ONNX Runtime is loaded from the cached export (`load_runtime(..., "onnx")` makes it once).

    python bench/runtime_latency.py --seconds 2
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from vlmops.data.images import load_image
    from vlmops.data.manifest import resolve_data
    from vlmops.export.runtimes import load_runtime

    torch.set_num_threads(1)
    paths = resolve_data("emoji").query("vendor == 'google'")["image"].iloc[:64]
    images = [load_image(Path(p).read_bytes()) for p in paths]
    models = {
        "torch": load_runtime("builtin:emoji-lit", "torch"),
        "onnx": load_runtime("builtin:emoji-lit", "onnx", threads=1),
    }
    for name, model in models.items():
        for size in args.batches:
            batch = images[:size]
            model.embed_images(batch)
            n, start, cpu0 = 0, time.perf_counter(), _cpu()
            while time.perf_counter() - start < args.seconds:
                model.embed_images(batch)
                n += size
            wall = time.perf_counter() - start
            print(
                f"{name:5s} batch {size:2d}: {1000 * (_cpu() - cpu0) / n:5.2f} ms CPU per image, "
                f"{n / wall:6.0f} images/s on one thread",
                flush=True,
            )
    a, b = (m.embed_images(images[:16]) for m in models.values())
    print(f"cosine torch vs onnx, 16 images: min {float(np.min((a * b).sum(axis=1))):.7f}")


if __name__ == "__main__":
    main()
