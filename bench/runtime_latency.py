"""CPU per image of builtin:emoji-lit under torch and under ONNX Runtime, one thread, by batch size.

What `--runtime` chooses between in `vlmops serve` (one model thread per worker process): the same
64-px emoji PNGs, decoded once, embedded in batches of 1, 8 and 32 for `--seconds` each, under
`torch`, `onnx-image` (the default: the image tower exported in memory at load) and, with `--onnx`,
the cached full export (`load_runtime(..., "onnx")` makes it once, ~25 s).

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
    parser.add_argument("--onnx", action="store_true", help="also the full ONNX export (made once, cached)")
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
        "onnx-image": load_runtime("builtin:emoji-lit", "onnx-image", threads=1),
    }
    if args.onnx:
        models["onnx"] = load_runtime("builtin:emoji-lit", "onnx", threads=1)
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
                f"{name:10s} batch {size:2d}: {1000 * (_cpu() - cpu0) / n:5.2f} ms CPU per image, "
                f"{n / wall:6.0f} images/s on one thread",
                flush=True,
            )
    reference = models["torch"].embed_images(images)
    for name, model in list(models.items())[1:]:
        vectors = model.embed_images(images)
        cosine = float(np.min((reference * vectors).sum(1)))
        diff = float(np.abs(reference - vectors).max())
        print(f"torch vs {name}, {len(images)} images: min cosine {cosine:.7f}, max abs diff {diff:.1e}")


if __name__ == "__main__":
    main()
