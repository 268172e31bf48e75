"""The label views as `VoteProbs` (voted classes + floor per row): O(items x k) memory, and every reading
the label checks make gives exactly what the dense (items, classes) matrix gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlmops.audit import stats
from vlmops.audit.label_views import LabelViews, caption_contradictions
from vlmops.audit.labels import (
    ZeroShot,
    _knn_fold,
    best_other,
    confident_learning,
    label_check,
    out_of_sample_probs,
    unsupported,
    zero_shot_probs,
)
from vlmops.audit.vote_probs import VoteProbs, other_class, row_argmax


def view_inputs(labels: list[str], image: np.ndarray):
    """What `build_views` reads of an AuditInputs: labelled records "0".."n-1" with captions "t0".."""
    from types import SimpleNamespace

    n = len(labels)
    frame = pd.DataFrame({"id": [str(i) for i in range(n)], "label": labels,
                          "texts": [[f"t{i}"] for i in range(n)]})  # fmt: skip
    return SimpleNamespace(
        frame=frame, readable=np.ones(n, dtype=bool), image_emb=lambda: image,
        first_texts=lambda: [f"t{i}" for i in range(n)], model=SimpleNamespace(logit_scale=30.0),
        cache=None, progress=False, prompt_template="{}",
    )  # fmt: skip


def _random_votes(seed: int, n: int, n_classes: int, width: int, levels: int | None = None) -> VoteProbs:
    """Random VoteProbs; with `levels`, values and floors from a few levels only (many exact ties)."""
    rng = np.random.default_rng(seed)
    cols = np.full((n, width), -1, dtype=np.int32)
    values = np.full((n, width), -np.inf)
    for r in range(n):
        m = rng.integers(0, width + 1)
        cols[r, :m] = rng.choice(n_classes, m, replace=False)
        values[r, :m] = rng.integers(1, levels + 1, m) / levels if levels else rng.random(m)
    floor = rng.integers(0, 3, n) / (4 * levels) if levels else rng.random(n) * 0.05
    return VoteProbs(cols, values, floor, n_classes)


@pytest.mark.parametrize("levels", [None, 3])
def test_readings_equal_the_dense_matrix(levels) -> None:
    n, n_classes = 600, 12
    votes = _random_votes(1, n, n_classes, 5, levels)
    other = _random_votes(2, n, n_classes, 5, levels)
    dense, dense_other = votes.to_dense(), other.to_dense()
    y = np.random.default_rng(3).integers(0, n_classes, n)
    rows, cols = np.arange(n), np.random.default_rng(4).integers(0, n_classes, n)
    assert np.array_equal(votes.at(rows, cols), dense[rows, cols])
    assert np.array_equal(row_argmax(votes), dense.argmax(axis=1))
    assert np.array_equal(votes.mean(other).to_dense(), (dense + dense_other) / 2)
    for got, want in zip(other_class((votes,), y), other_class((dense,), y), strict=True):
        assert np.array_equal(got, want)
    for got, want in zip(other_class((votes, other), y), other_class((dense, dense_other), y), strict=True):
        assert np.array_equal(got, want)
    assert np.array_equal(best_other(votes, y), best_other(dense, y))
    assert np.array_equal(unsupported(votes, y), unsupported(dense, y))
    for got, want in zip(confident_learning(votes, y), confident_learning(dense, y), strict=True):
        assert np.array_equal(got, want)
    assert VoteProbs.from_dense(dense).to_dense().tobytes() == dense.tobytes()


def test_confident_learning_on_knn_views_equals_dense(monkeypatch) -> None:
    monkeypatch.setattr(stats, "ROW_BLOCK", 97)  # several blocks of rows
    rng = np.random.default_rng(0)
    n_classes, n = 30, 900
    y = rng.integers(0, n_classes, n)
    centres = rng.normal(size=(n_classes, 16))
    emb = centres[y] + rng.normal(scale=1.5, size=(n, 16))
    labels = [f"c{v:02d}" for v in y]
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "label": labels, "texts": [["t"]] * n})
    for prior in (None, 10.0):
        dense, classes = out_of_sample_probs(emb, labels, prior=prior)
        sparse, _ = out_of_sample_probs(emb, labels, prior=prior, sparse=True)
        assert sparse.to_dense().tobytes() == dense.tobytes()
        assert sparse.nbytes < dense.nbytes
        yy = np.searchsorted(classes, labels)
        for got, want in zip(confident_learning(sparse, yy), confident_learning(dense, yy), strict=True):
            assert np.array_equal(got, want)
    text = emb + rng.normal(scale=1.0, size=emb.shape)
    dense_t, _ = out_of_sample_probs(text, labels)
    sparse_t, _ = out_of_sample_probs(text, labels, sparse=True)
    want = label_check(frame, dense, classes, "s", None, dense_t, dense)
    got = label_check(frame, sparse, classes, "s", None, sparse_t, sparse)
    assert got.to_dict() == want.to_dict() and want.metrics["label_issues"] > 0


def test_knn_fold_sparse_is_the_dense_fold() -> None:
    rng = np.random.default_rng(5)
    train, test = rng.normal(size=(300, 8)), rng.normal(size=(120, 8))
    y_train = rng.integers(0, 7, 300)
    for weighted, prior in ((True, None), (False, None), (True, 10.0)):
        dense = _knn_fold(train, y_train, test, 7, 10, weighted, prior)
        sparse = _knn_fold(train, y_train, test, 7, 10, weighted, prior, sparse=True)
        assert sparse.to_dense().tobytes() == dense.tobytes()


def test_zero_shot_cells_equal_the_dense_softmax(monkeypatch) -> None:
    monkeypatch.setattr(stats, "ROW_BLOCK", 64)
    rng = np.random.default_rng(6)
    emb = rng.normal(size=(500, 32)).astype(np.float32)
    class_emb = rng.normal(size=(40, 32)).astype(np.float32)
    rows = rng.permutation(500)[:300]
    dense = zero_shot_probs(emb[rows], class_emb, 30.0)
    a, b = rng.integers(0, 40, 300), rng.integers(0, 40, 300)
    got = ZeroShot(emb, rows, class_emb, 30.0).cells(a, b)
    assert np.array_equal(got[0], dense[np.arange(300), a])
    assert np.array_equal(got[1], dense[np.arange(300), b])


def test_contradictions_on_sparse_views_equal_dense() -> None:
    rng = np.random.default_rng(7)
    n, n_classes = 800, 20
    y = rng.integers(0, n_classes, n)
    labels = [f"c{v:02d}" for v in y]
    centres = rng.normal(size=(n_classes, 16))
    image = centres[y] + rng.normal(scale=1.2, size=(n, 16))
    text = centres[y] + rng.normal(scale=1.2, size=(n, 16))
    swapped = rng.choice(n, 80, replace=False)
    text[swapped] = text[rng.permutation(swapped)]
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "label": labels,
                          "texts": [[f"cap{i}"] for i in range(n)]})  # fmt: skip
    class_emb = centres.astype(np.float32)
    zero = ZeroShot(image.astype(np.float32), np.arange(n), class_emb, 20.0)
    dense_zero = zero_shot_probs(image.astype(np.float32), class_emb, 20.0)

    def views(sparse: bool) -> LabelViews:
        probs = [out_of_sample_probs(e, labels, prior=p, sparse=sparse)[0]
                 for e, p in ((image, None), (text, None), (text, 10.0))]  # fmt: skip
        classes = [f"c{v:02d}" for v in range(n_classes)]
        return LabelViews(np.arange(n), classes, y, probs[0], probs[1], None, "knn",
                          zero if sparse else dense_zero, None, probs[2])  # fmt: skip

    want = [f.__dict__ for f in caption_contradictions(frame, views(False))]
    got = [f.__dict__ for f in caption_contradictions(frame, views(True))]
    assert got == want and want


@pytest.mark.parametrize("method", ["knn", "logistic"])
def test_built_views_give_the_dense_views_findings(monkeypatch, method) -> None:
    """build_views' views (VoteProbs and on-demand zero-shot; logistic: dense) give the same label
    issues and caption contradictions as the same views made dense."""
    from dataclasses import replace

    import vlmops.store.embed as embed
    from vlmops.audit.label_views import build_views

    rng = np.random.default_rng(9)
    n, n_classes = 400, 8
    y = np.arange(n) % n_classes
    centres = rng.normal(size=(n_classes, 8))
    image = (centres[y] + rng.normal(scale=0.9, size=(n, 8))).astype(np.float32)
    text = (centres[y] + rng.normal(scale=0.9, size=(n, 8))).astype(np.float32)
    text[:40] = text[40:80]  # swapped captions
    prompts = {f"c{v}": centres[v].astype(np.float32) for v in range(n_classes)}
    monkeypatch.setattr(embed, "embed_texts_cached", lambda model, texts, *a, **k: (
        np.stack([prompts[t] if t in prompts else text[int(t[1:])] for t in texts]), None))  # fmt: skip
    inputs = view_inputs([f"c{v}" for v in y], image)
    frame = inputs.frame
    views = build_views(inputs, method)

    def dense(v):
        return v.to_dense() if isinstance(v, VoteProbs) else v

    zero = views.zero_shot_probs
    dense_views = replace(
        views, image_probs=dense(views.image_probs), text_probs=dense(views.text_probs),
        lookalike=dense(views.lookalike), caption_lookalike=dense(views.caption_lookalike),
        zero_shot_probs=zero_shot_probs(zero.image_emb[zero.rows], zero.class_emb, zero.logit_scale),
    )  # fmt: skip
    assert isinstance(views.image_probs, VoteProbs) == (method == "knn")
    got, want = (
        ([f.__dict__ for f in caption_contradictions(frame, v)],
         label_check(frame, v.image_probs, v.classes, "s", None, v.text_probs, v.lookalike).to_dict())
        for v in (views, dense_views)
    )  # fmt: skip
    assert got == want and want[0] and want[1]["findings"]
