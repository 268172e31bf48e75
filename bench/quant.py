"""Quantization: image throughput and zero-shot top-1 of torch fp32, torch-int8, onnx fp32 and onnx-int8.

All runtimes run side by side in one process on the same inputs, round-robin, so machine noise hits
them alike. Throughput is images/s of batches of `--batch-size` test images, median over `--repeats`
rounds after a warm-up; "x torch" is the median of the per-round ratios to torch fp32. Measured
twice: "model" feeds the already preprocessed pixel batch (numpy, identical for all runtimes;
preprocessing excluded), "e2e" calls `embed_images` on PIL images (preprocessing included, the same
numpy code for all). Top-1 is zero-shot at the concept tier on the full emoji test split (prompt
"an emoji of {}"), each runtime with its own text tower.

    python bench/quant.py                          # the four runtimes
    python bench/quant.py --knobs                  # plus onnx-int8 recipe variants
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_SPEEDUP, TARGET_DROP_PP = 2.0, 0.5

KNOBS = {  # name -> Int8Recipe changes (default: Conv but the stem, per-channel, reduce_range, QDQ)
    "int8 +stem conv": {"skip_first_conv": False},
    "int8 +gemm+add+pool": {"image_ops": ("Conv", "Gemm", "Add", "GlobalAveragePool")},
    "int8 per-tensor": {"per_channel": False},
    "int8 no reduce_range": {"reduce_range": False},
    "int8 QOperator": {"quant_format": "QOperator"},
    "int8 +text": {"text": True},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-lit", help="model URI (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per call (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=20, help="batches per round (default: %(default)s)")
    parser.add_argument("--calibration-size", type=int, default=256, help="int8 calibration images")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads per runtime")
    parser.add_argument("--knobs", action="store_true", help="also time onnx-int8 recipe variants")
    return parser.parse_args(argv)


def build_runtimes(args, frame, tmp: Path) -> dict:
    """name -> model, for every runtime compared (exports go to `tmp`)."""
    import torch

    from vlmops.export.gate import sample_images
    from vlmops.models import load_model
    from vlmops.models.onnx import load as load_bundle
    from vlmops.models.onnx_export import Int8Recipe, export_bundle
    from vlmops.models.runtimes import torch_int8

    torch.set_num_threads(args.threads)
    source = load_model(args.model, batch_size=args.batch_size)
    calibration = sample_images(frame, "train", args.calibration_size, seed=0)
    recipes = {
        "onnx-int8": Int8Recipe(),
        **({k: Int8Recipe(**v) for k, v in KNOBS.items()} if args.knobs else {}),
    }
    models = {"torch": source, "torch-int8": torch_int8(source)}
    export_bundle(source, tmp / "onnx")
    models["onnx"] = load_bundle(str(tmp / "onnx"), batch_size=args.batch_size, threads=args.threads)
    for i, (name, recipe) in enumerate(recipes.items()):
        export_bundle(source, tmp / f"int8-{i}", int8=True, calibration_images=calibration, recipe=recipe)
        models[name] = load_bundle(str(tmp / f"int8-{i}"), batch_size=args.batch_size, threads=args.threads)
    return models


def forward(model, pixels: np.ndarray) -> None:
    """One model call on preprocessed pixels, without preprocessing."""
    if hasattr(model, "embed_pixels_array"):
        model.embed_pixels_array(pixels)
        return
    import torch

    with torch.inference_mode():
        model.tower(torch.from_numpy(pixels))


def throughput(models: dict, images: list, args) -> dict[str, dict[str, float]]:
    """Median images/s per runtime and median per-round ratio to torch, model-only and end-to-end.

    Rounds are round-robin over the runtimes, starting one runtime later each round, so slow spells
    of a shared machine hit every runtime; the ratio is taken within a round, then the median.
    """
    from vlmops.models.preprocess import pixel_array

    size = next(iter(models.values())).info.image_size
    batches = [
        images[i : i + args.batch_size] for i in range(0, args.calls * args.batch_size, args.batch_size)
    ]
    pixels = [pixel_array(b, size) for b in batches]
    modes = {
        "model": lambda m: [forward(m, p) for p in pixels],
        "e2e": lambda m: [m.embed_images(b) for b in batches],
    }
    for model in models.values():  # warm-up: allocators, kernels, thread pools
        modes["model"](model)
        modes["e2e"](model)
    names = list(models)
    rates: dict[str, dict[str, list[float]]] = {name: {"model": [], "e2e": []} for name in names}
    for round_ in range(args.repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            for mode, run in modes.items():
                start = time.perf_counter()
                run(models[name])
                rates[name][mode].append(args.calls * args.batch_size / (time.perf_counter() - start))
    out = {}
    for name, r in rates.items():
        out[name] = {mode: statistics.median(v) for mode, v in r.items()}
        for mode, v in r.items():
            out[name][f"{mode}_x"] = statistics.median(
                a / b for a, b in zip(v, rates["torch"][mode], strict=True)
            )
    return out


def accuracy(models: dict, task, images: list) -> dict[str, dict[str, float]]:
    """Zero-shot top-1 on the task and image-vector cosine to torch fp32, per runtime."""
    from vlmops.evaluate.zeroshot import class_embeddings, zero_shot

    out, reference = {}, None
    for name, model in models.items():
        vectors = model.embed_images(images)
        reference = vectors if reference is None else reference
        cosine = (vectors * reference).sum(axis=1)
        classes = class_embeddings(model, task.class_names, task.templates)
        top1 = zero_shot(vectors, classes, task.classes, task.labels).top1
        out[name] = {"top1": top1, "cos_mean": float(cosine.mean()), "cos_min": float(cosine.min())}
    return out


def main(argv: list[str] | None = None) -> None:
    """Export, time and score every runtime; print one table and the verdict on the targets."""
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.data.images import load_image
    from vlmops.evaluate.task import build_task

    args = parse_args(argv)
    frame = load_emoji_manifest()
    task = build_task(frame, "emoji", split="test")
    images = [load_image(p) for p in task.frame["image"]]
    if len(images) < args.calls * args.batch_size:
        raise SystemExit(f"--calls x --batch-size exceeds the {len(images)} test images")
    with tempfile.TemporaryDirectory() as tmp:
        models = build_runtimes(args, frame, Path(tmp))
        load_before = os.getloadavg()[0]
        speed = throughput(models, images, args)
        load_after = os.getloadavg()[0]
        scores = accuracy(models, task, images)
    print(
        f"emoji test split: {task.n} images, {len(task.classes)} concepts; batch {args.batch_size}, "
        f"{args.threads} threads, median of {args.repeats} rounds x {args.calls} batches; "
        f"1-min load average {load_before:.2f} before timing, {load_after:.2f} after"
    )
    print(
        f"{'runtime':22s} {'model img/s':>11s} {'x torch':>7s} {'e2e img/s':>9s} {'x torch':>7s} "
        f"{'top-1':>7s} {'drop pp':>7s} {'cos mean':>8s} {'cos min':>8s}"
    )
    base_top1 = scores["torch"]["top1"]
    for name in models:
        s, a = speed[name], scores[name]
        print(
            f"{name:22s} {s['model']:11.0f} {s['model_x']:7.2f} {s['e2e']:9.0f} "
            f"{s['e2e_x']:7.2f} {a['top1']:7.4f} {100 * (base_top1 - a['top1']):7.2f} "
            f"{a['cos_mean']:8.5f} {a['cos_min']:8.5f}"
        )
    s, a = speed["onnx-int8"], scores["onnx-int8"]
    ratio, drop = s["model_x"], 100 * (base_top1 - a["top1"])
    print(
        f"onnx-int8 vs torch fp32: {ratio:.2f}x images/s (target >= {TARGET_SPEEDUP}x: "
        f"{'met' if ratio >= TARGET_SPEEDUP else 'MISSED'}), top-1 drop {drop:.2f} pp "
        f"(target <= {TARGET_DROP_PP} pp: {'met' if drop <= TARGET_DROP_PP else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
