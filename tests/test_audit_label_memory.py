"""The labels check on (items, classes) probability matrices makes no full-size copies of them: at 1,923
classes one matrix is 1.5 GiB per 100k items, and the 100k-image audit held several at once."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd

from test_audit_vote_probs import view_inputs
from vlmops.audit import stats
from vlmops.audit.label_views import LabelViews, build_views, caption_contradictions
from vlmops.audit.labels import label_check, zero_shot_probs


def _probs(seed: int, y: np.ndarray, n_classes: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += 3.0
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _peak_above(call) -> int:
    """Bytes traced at the peak of `call()` above what was held when it started."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_label_check_and_contradictions_need_less_than_one_matrix_more(monkeypatch) -> None:
    monkeypatch.setattr(stats, "ROW_BLOCK", 1000)  # 12 blocks of rows
    n, n_classes = 12_000, 200  # 19 MB per matrix
    y = np.arange(n) % n_classes
    flipped = np.random.default_rng(0).choice(n, 500, replace=False)
    y[flipped] = (y[flipped] + 1) % n_classes
    classes = [f"c{i}" for i in range(n_classes)]
    frame = pd.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "label": [classes[v] for v in y], "texts": [["t"]] * n}
    )
    image, text, evidence, zero_shot = (
        _probs(seed, np.arange(n) % n_classes, n_classes) for seed in range(4)
    )
    matrix = image.nbytes
    result = {}
    peak = _peak_above(lambda: result.update(r=label_check(frame, image, classes, "s", None, text, evidence)))
    assert result["r"].metrics["label_issues"] > 0
    assert peak < 0.5 * matrix, f"label_check peaked {peak / matrix:.1f} matrices above its inputs"
    views = LabelViews(np.arange(n), classes, y, image, text, None, "knn", zero_shot, evidence, evidence)
    peak = _peak_above(lambda: result.update(c=caption_contradictions(frame, views)))
    assert peak < 0.5 * matrix, f"contradictions peaked {peak / matrix:.1f} matrices above their inputs"
    emb = np.random.default_rng(5).normal(size=(n, 16))
    peak = _peak_above(lambda: zero_shot_probs(emb, emb[:n_classes], 30.0))
    assert peak < 1.5 * matrix  # its result, and nothing more of that size


def test_label_views_memory_grows_with_k_not_with_classes(monkeypatch) -> None:
    """At many classes the views hold a few slots per record, not one value per class (dense: 4 matrices
    of n x classes float64, 48 KB per record at 1,500 classes)."""
    import vlmops.store.embed as embed

    rng = np.random.default_rng(8)
    n, n_classes = 3000, 1500
    y = np.arange(n) % n_classes
    labels = [f"c{v:04d}" for v in y]
    centres = rng.normal(size=(n_classes, 16))
    image = (centres[y] + rng.normal(scale=0.5, size=(n, 16))).astype(np.float32)
    monkeypatch.setattr(embed, "embed_texts_cached", lambda model, texts, *a, **k: (
        rng.normal(size=(len(texts), 16)).astype(np.float32), None))  # fmt: skip
    inputs = view_inputs(labels, image)
    views = build_views(inputs, "knn")
    held = [views.image_probs, views.text_probs, views.lookalike, views.caption_lookalike]
    held.append(views.zero_shot_probs)  # computed on demand: no matrix of its own
    per_record = sum(getattr(v, "nbytes", 0) for v in held) / n
    assert per_record < 1000, f"the label views hold {per_record:.0f} bytes per record"
