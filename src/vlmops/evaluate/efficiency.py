"""What the model costs to run, and whether its scores depend on the batch size.

Throughput is measured on images already decoded in memory, so it is the model's cost, not the disk's.
Latency percentiles come from single-image calls. Peak RSS is the whole process's high-water mark so
far (it includes the evaluation itself), read from the OS.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from vlmops.models.base import VLM

INVARIANCE_ATOL = 1e-5


def count_parameters(model: VLM) -> int | None:
    """Parameters of every torch module the adapter holds (one level deep), or None when it has none."""
    import torch

    seen: dict[int, int] = {}
    holders = [model, *(v for v in vars(model).values() if hasattr(v, "__dict__"))]
    for holder in holders:
        for value in vars(holder).values():
            if isinstance(value, torch.nn.Module):
                seen.update({id(p): p.numel() for p in value.parameters()})
    return sum(seen.values()) if seen else None


def peak_rss_mb() -> float:
    """The process's peak resident set size in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _per_second(fn: Callable[[Sequence], object], items: Sequence, batch: int, min_seconds: float) -> float:
    """Items per second of `fn` on consecutive batches, repeated until `min_seconds` have passed."""
    fn(items[:batch])  # warm-up
    done, start = 0, time.perf_counter()
    while True:
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            fn(chunk)
            done += len(chunk)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def _latencies_ms(fn: Callable[[Sequence], object], items: Sequence, calls: int) -> np.ndarray:
    times = []
    for i in range(calls):
        start = time.perf_counter()
        fn(items[i % len(items) : i % len(items) + 1])
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times)


def efficiency_section(
    model: VLM,
    images: Sequence[Image.Image],
    texts: Sequence[str],
    dollars_per_hour: float,
    min_seconds: float = 1.0,
    latency_calls: int = 50,
) -> dict:
    """Parameters, images/s and texts/s at batch 1 and 64, p50/p95 latency, peak RSS, $ per 1,000 images."""
    import torch

    images, texts = list(images), list(texts)
    if not images or not texts:
        raise ValueError("efficiency needs at least one image and one text")
    latency = _latencies_ms(model.embed_images, images, latency_calls)
    throughput = {
        f"images_per_s_batch{b}": _per_second(model.embed_images, images, b, min_seconds) for b in (1, 64)
    }
    throughput |= {
        f"texts_per_s_batch{b}": _per_second(model.embed_texts, texts, b, min_seconds) for b in (1, 64)
    }
    per_s = throughput["images_per_s_batch64"]
    return {
        "parameters": count_parameters(model),
        **throughput,
        "latency_ms_p50": float(np.percentile(latency, 50)),
        "latency_ms_p95": float(np.percentile(latency, 95)),
        "peak_rss_mb": peak_rss_mb(),
        "dollars_per_hour": dollars_per_hour,
        "dollars_per_1000_images": dollars_per_hour / 3600 / per_s * 1000,
        "torch_threads": torch.get_num_threads(),
        "n_images_timed": len(images),
    }


def batch_invariance_section(
    model: VLM, images: Sequence[Image.Image], class_emb: np.ndarray, atol: float = INVARIANCE_ATOL
) -> dict:
    """Embed the same images one at a time and as one batch; compare embeddings, logits and top-1."""
    images = list(images)
    single = np.concatenate([model.embed_images([image]) for image in images])
    batched = model.embed_images(images)
    scale = float(model.logit_scale)
    logit_diff = scale * np.abs(single @ class_emb.T - batched @ class_emb.T)
    same_top1 = np.argmax(single @ class_emb.T, axis=1) == np.argmax(batched @ class_emb.T, axis=1)
    emb_diff = float(np.abs(single - batched).max())
    return {
        "n": len(images),
        "batch_sizes": [1, len(images)],
        "max_abs_embedding_diff": emb_diff,
        "max_abs_logit_diff": float(logit_diff.max()),
        "top1_agreement": float(same_top1.mean()),
        "atol": atol,
        "invariant": bool(emb_diff <= atol and same_top1.all()),
    }
