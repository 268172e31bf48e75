"""Drift detection on the real vendor shift, and label-free accuracy estimation.

Reference: 500 google + twitter emoji (test split), embedded by builtin:emoji-lit. No-shift windows come
from the other google + twitter test images; shifted windows from facebook + openmoji (the same
concepts drawn by other vendors). For window sizes 10, 25, 50, 100, 200 each detector tests N windows
of each kind at alpha = 0.05: power = share of shifted windows flagged, false-alarm rate = share of
no-shift windows flagged. Label-free accuracy estimates (calibrated AC, ATC, DoC, fitted on the
reference with its labels) are compared with each shifted window's realised zero-shot accuracy, next
to the naive average (uncalibrated) confidence.

    python bench/drift.py                # 100 windows per size and kind
    python bench/drift.py --windows 40   # quicker
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SIZES = (10, 25, 50, 100, 200)


def load(reference_size: int, seed: int):
    """Embeddings, concept targets and class embeddings of the emoji test split; reference/pool/shift rows."""
    from vlmops.data.manifest import resolve_data
    from vlmops.evaluate.task import build_task
    from vlmops.models import load_model
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import embed_images_cached

    model = load_model("builtin:emoji-lit")
    task = build_task(resolve_data("emoji"), "emoji", "all", "concept")
    frame = task.frame
    rows = np.flatnonzero((frame["split"] == "test").to_numpy())
    with open_cache() as cache:
        emb, _ = embed_images_cached(model, [frame["image"][i] for i in rows], cache, progress=True)
    index = {c: i for i, c in enumerate(task.classes)}
    targets = np.array([index[task.labels[i]] for i in rows])
    classes = model.embed_texts([task.templates[0].format(n) for n in task.class_names]).astype(np.float64)
    vendor = frame["vendor"].to_numpy()[rows]
    healthy = np.flatnonzero(np.isin(vendor, ["google", "twitter"]))
    shifted = np.flatnonzero(np.isin(vendor, ["facebook", "openmoji"]))
    rng = np.random.default_rng(seed)
    healthy = rng.permutation(healthy)
    return (
        emb.astype(np.float64),
        targets,
        classes,
        model.logit_scale,
        healthy[:reference_size],
        healthy[reference_size:],
        shifted,
    )


def detectors():
    from vlmops.monitor import (
        DomainClassifierDetector,
        KSDetector,
        KSPCADetector,
        MMDDetector,
        PredictionShiftDetector,
    )

    return {
        "mmd": lambda: MMDDetector(n_permutations=500),
        "ks_pca": lambda: KSPCADetector(n_components=10),
        "prediction_shift": lambda: PredictionShiftDetector(),
        "domain_classifier": lambda: DomainClassifierDetector(cv_auc=False),
        "alignment_ks": lambda: KSDetector(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=100, help="windows per size and kind (default 100)")
    parser.add_argument("--reference", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from vlmops.evaluate.calibration import softmax
    from vlmops.monitor.estimate import AccuracyEstimator

    emb, targets, classes, scale, ref, pool, shift = load(args.reference, args.seed)
    logits = scale * emb @ classes.T
    probs = softmax(logits)
    align = (emb @ classes.T).max(1)
    features = {
        "mmd": emb,
        "ks_pca": emb,
        "domain_classifier": emb,
        "prediction_shift": probs,
        "alignment_ks": align,
    }
    print(
        f"reference {len(ref)} google+twitter, no-shift pool {len(pool)}, shifted pool {len(shift)} "
        f"(facebook+openmoji); {args.windows} windows per size and kind, alpha 0.05"
    )
    rng = np.random.default_rng(args.seed + 1)
    fitted = {name: make().fit(features[name][ref]) for name, make in detectors().items()}
    print(f"{'detector':18s} {'window':>6s} {'power':>6s} {'false alarms':>12s} {'s/test':>7s}")
    for name, detector in fitted.items():
        for size in SIZES:
            flagged = {"shift": 0, "none": 0}
            start = time.perf_counter()
            for _ in range(args.windows):
                for kind, source in (("shift", shift), ("none", pool)):
                    window = rng.choice(source, size, replace=False)
                    flagged[kind] += detector.test(features[name][window]).drifted
            per_test = (time.perf_counter() - start) / (2 * args.windows)
            print(
                f"{name:18s} {size:6d} {flagged['shift'] / args.windows:6.2f} "
                f"{flagged['none'] / args.windows:12.2f} {per_test:7.3f}",
                flush=True,
            )

    estimator = AccuracyEstimator.fit(logits[ref], targets[ref])
    print(
        f"\nlabel-free accuracy on shifted windows of 200 (reference accuracy {estimator.val_accuracy:.3f}, "
        f"T = {estimator.temperature:.2f})"
    )
    errors: dict[str, list[float]] = {}
    for source_name, source in (("shifted", shift), ("no-shift", pool)):
        errs: dict[str, list[float]] = {}
        for _ in range(args.windows):
            window = rng.choice(source, 200, replace=False)
            truth = float((logits[window].argmax(1) == targets[window]).mean())
            for method, value in estimator.estimate(logits[window]).items():
                errs.setdefault(method, []).append(abs(value - truth))
        errors[source_name] = {m: float(np.mean(v)) for m, v in errs.items()}
        print(
            f"{source_name:9s} MAE (pp): "
            + ", ".join(f"{m} {100 * v:.2f}" for m, v in errors[source_name].items())
        )


if __name__ == "__main__":
    main()
