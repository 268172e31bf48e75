"""The audit's neighbour searches: exact below the threshold, a faiss IVF index above it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlmops.audit import neighbours
from vlmops.audit.caption_swaps import swap_partners
from vlmops.audit.labels import alignment_check, label_check, out_of_sample_probs
from vlmops.audit.neighbours import neighbour_options, top_k
from vlmops.errors import VlmopsError

RECALL_BOUND = 0.95  # recall@10 of the IVF index against the exact search on the clustered set below


def clustered(n: int = 4000, dim: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """Unit rows around `clusters` centres (the shape of real embeddings: many look-alike groups)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(clusters, dim))[rng.integers(clusters, size=n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(queries, base, k, exclude=None, block=None, train=None):
    """Today's exact search written the plain way: the whole product, then argpartition."""
    sims = np.asarray(queries, np.float32) @ np.asarray(base, np.float32).T
    if exclude is not None:
        sims[exclude[0][:, None] == exclude[1][None, :]] = -np.inf
    top = sims.argmax(axis=1)[:, None] if k == 1 else np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return top, np.take_along_axis(sims, top, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


def test_below_the_threshold_the_search_is_the_exact_one() -> None:
    x = clustered(1500)
    ids, sims = top_k(x[:700], x[700:], 10, block=128)
    ref_ids, ref_sims = brute_force(x[:700], x[700:], 10)
    assert [set(r) for r in ids] == [set(r) for r in ref_ids]
    np.testing.assert_allclose(np.sort(sims, axis=1), np.sort(ref_sims, axis=1), rtol=0, atol=1e-6)


def test_the_index_above_the_threshold_has_high_recall_and_exact_similarities() -> None:
    x = clustered()
    queries, base = x[:1000], x[1000:]
    truth = brute_force(queries, base, 10)[0]
    with neighbour_options(threshold=0):
        ids, sims = top_k(queries, base, 10)
    assert recall(ids, truth) >= RECALL_BOUND
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", queries, base[ids]), atol=1e-6)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)  # best first


def test_the_index_honours_exclusions_and_falls_back_when_too_few_remain() -> None:
    x = clustered(3000)
    groups = np.arange(len(x)) // 3  # each row's group: itself and two neighbours by index
    groups[:500] = 0  # one big group: its members must look beyond 499 look-alikes
    truth = brute_force(x, x, 5, exclude=(groups, groups))[0]
    with neighbour_options(threshold=10):
        ids, sims = top_k(x, x, 5, exclude=(groups, groups))
    assert not np.any(groups[ids] == groups[:, None])
    assert np.isfinite(sims).all() and recall(ids, truth) >= RECALL_BOUND


def faulty_set(n_labels: int = 8, per: int = 150, seed: int = 1):
    """Labelled records whose images and captions share a label direction; 4 % of labels flipped and
    three pairs of captions exchanged."""
    rng = np.random.default_rng(seed)
    n = n_labels * per
    truth = np.repeat(np.arange(n_labels), per)
    centres = rng.normal(size=(n_labels, 48))
    own = rng.normal(size=(n, 48))
    images = centres[truth] + 0.5 * own + 0.3 * rng.normal(size=(n, 48))
    texts = centres[truth] + 0.5 * own + 0.3 * rng.normal(size=(n, 48))
    labels = truth.copy()
    flipped = rng.choice(n, n // 25, replace=False)
    labels[flipped] = (truth[flipped] + 1 + rng.integers(n_labels - 1, size=len(flipped))) % n_labels
    captions = [f"caption {i}" for i in range(n)]
    for a, b in [(3, 700), (20, 1000), (401, 402)]:
        texts[[a, b]] = texts[[b, a]]
        captions[a], captions[b] = captions[b], captions[a]
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "texts": [[c] for c in captions],
            "label": [f"l{v}" for v in labels],
        }
    )
    return frame, images.astype(np.float32), texts.astype(np.float32)


def small_audit(frame, images, texts) -> list[tuple]:
    """The label and alignment findings (as comparable tuples) of a k-NN two-view audit."""
    labels = list(frame["label"])
    probs, classes = out_of_sample_probs(images, labels)
    confirm, _ = out_of_sample_probs(texts, labels)
    lookalike = [out_of_sample_probs(view, labels, prior=10.0)[0] for view in (images, texts)]
    evidence = (lookalike[0] + lookalike[1]) / 2
    found = label_check(frame, probs, classes, "knn", confirm=confirm, evidence=evidence).findings
    found += alignment_check(frame, images, texts).findings
    partners = swap_partners(images, texts, [t[0] for t in frame["texts"]])
    return [(f.record_id, f.kind, f.message) for f in found] + [("swap partners", tuple(partners), "")]


def test_a_small_audit_below_the_threshold_finds_what_the_exact_search_finds(monkeypatch) -> None:
    frame, images, texts = faulty_set()
    found = small_audit(frame, images, texts)
    assert {"label_issue", "misaligned_caption"} <= {kind for _, kind, _ in found}
    monkeypatch.setattr(neighbours, "top_k", brute_force)
    assert small_audit(frame, images, texts) == found


def test_a_small_audit_through_the_index_finds_the_same_faults() -> None:
    frame, images, texts = faulty_set()
    exact = small_audit(frame, images, texts)
    with neighbour_options(threshold=0):
        approximate = small_audit(frame, images, texts)
    assert {(r, k) for r, k, _ in approximate} == {(r, k) for r, k, _ in exact}


def test_bad_thresholds_are_refused_with_the_fix(monkeypatch) -> None:
    monkeypatch.setenv("VLMOPS_ANN_THRESHOLD", "lots")
    with pytest.raises(VlmopsError, match="VLMOPS_ANN_THRESHOLD='lots'"):
        top_k(np.ones((1, 2)), np.ones((3, 2)), 1)
    monkeypatch.setenv("VLMOPS_ANN_THRESHOLD", "7")
    assert neighbours.current_options().threshold == 7
    with pytest.raises(VlmopsError, match="0 or more"), neighbour_options(threshold=-1):
        pass
    with pytest.raises(VlmopsError, match="k=4 neighbours"):
        top_k(np.ones((1, 2)), np.ones((3, 2)), 4)
