"""Retrieval metrics against a hand-made case, an independent brute-force loop and edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmops.evaluate.retrieval import retrieval_metrics


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_rank(scores: np.ndarray, relevant: set[int]) -> int:
    """1-based rank of the best relevant item: items above it score higher, or tie with a lower index."""
    return min(
        1 + sum(1 for m in range(len(scores)) if scores[m] > scores[j] or (scores[m] == scores[j] and m < j))
        for j in relevant
    )


def test_hand_made_multiple_relevant_texts() -> None:
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[0.6, 0.8], [1.0, 0.0], [0.8, 0.6]])
    res = retrieval_metrics(images, texts, [{0, 2}, {1}], ks=(1, 2, 3))
    i2t, t2i = res.image_to_text, res.text_to_image
    # image 0: order t1, t2, t0 -> first relevant t2 at 2; image 1: order t0, t2, t1 -> t1 at 3
    assert i2t.ranks.tolist() == [2, 3]
    assert i2t.recall == {1: 0.0, 2: 0.5, 3: 1.0}
    assert (i2t.median_rank, i2t.mean_rank) == (2.5, 2.5)
    # text 0 -> image 0 at 2; text 1 -> image 1 at 2; text 2 -> image 0 at 1
    assert t2i.ranks.tolist() == [2, 2, 1]
    assert t2i.recall[1] == pytest.approx(1 / 3) and t2i.recall[2] == 1.0
    assert t2i.median_rank == 2.0 and t2i.mean_rank == pytest.approx(5 / 3)
    assert (i2t.n_queries, i2t.n_items, t2i.n_queries, t2i.n_items) == (2, 3, 3, 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_img, n_txt, ks = 25, 40, (1, 3, 5, 10)
    images, texts = unit(rng.normal(size=(n_img, 8))), unit(rng.normal(size=(n_txt, 8)))
    rel = [set(rng.choice(n_txt, size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(n_img)]
    res = retrieval_metrics(images, texts, rel, ks=ks)
    sim = images @ texts.T
    i2t = [brute_rank(sim[i], rel[i]) for i in range(n_img)]
    queried = [j for j in range(n_txt) if any(j in r for r in rel)]
    t2i = [brute_rank(sim[:, j], {i for i in range(n_img) if j in rel[i]}) for j in queried]
    for got, want in ((res.image_to_text, i2t), (res.text_to_image, t2i)):
        assert got.ranks.tolist() == want
        assert got.n_queries == len(want)
        for k in ks:
            assert got.recall[k] == pytest.approx(np.mean([r <= k for r in want]))
        assert got.median_rank == pytest.approx(np.median(want))
        assert got.mean_rank == pytest.approx(np.mean(want))


def test_recall_at_n_is_one_and_identity_ranks_first() -> None:
    rng = np.random.default_rng(2)
    n = 20
    res = retrieval_metrics(rng.normal(size=(n, 6)), rng.normal(size=(n, 6)), np.arange(n), ks=(1, n))
    assert res.image_to_text.recall[n] == 1.0 and res.text_to_image.recall[n] == 1.0
    emb = unit(rng.normal(size=(n, 16)))
    res = retrieval_metrics(emb, emb, np.arange(n))
    for d in (res.image_to_text, res.text_to_image):
        assert d.median_rank == 1.0 and d.mean_rank == 1.0 and d.recall[1] == 1.0


def test_array_mapping_equals_singleton_sets_and_distractors_skipped() -> None:
    rng = np.random.default_rng(3)
    images, texts = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    mapping = np.array([0, 2, 4, 6, 8, 1])
    a = retrieval_metrics(images, texts, mapping)
    b = retrieval_metrics(images, texts, [{int(j)} for j in mapping])
    assert a.to_dict() == b.to_dict()
    assert a.text_to_image.n_queries == 6 and a.image_to_text.n_items == 9  # texts 3, 5, 7 are distractors


def test_ties_broken_by_index_and_not_normalised_input() -> None:
    images = np.array([[2.0, 0.0]])  # scaled: cosine, not dot product
    texts = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])  # texts 0 and 1 tie at cosine 1
    assert retrieval_metrics(images, texts, [{1}]).image_to_text.ranks.tolist() == [2]
    assert retrieval_metrics(images, texts, [{0}]).image_to_text.ranks.tolist() == [1]


def test_to_dict_is_json_ready() -> None:
    rng = np.random.default_rng(4)
    d = retrieval_metrics(rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), np.arange(5)).to_dict()
    json.dumps(d)
    keys = {"n_queries", "n_items", "R@1", "R@5", "R@10", "median_rank", "mean_rank"}
    assert set(d["image_to_text"]) == keys and set(d["text_to_image"]) == keys


def test_validation_errors() -> None:
    img, txt = np.eye(3), np.eye(3)
    with pytest.raises(ValueError, match="image 1 has no relevant text"):
        retrieval_metrics(img, txt, [{0}, set(), {2}])
    with pytest.raises(ValueError, match=r"text index 5, outside \[0, 3\)"):
        retrieval_metrics(img, txt, [{0}, {5}, {2}])
    with pytest.raises(ValueError, match="3 images"):
        retrieval_metrics(img, txt, np.arange(2))
    with pytest.raises(ValueError, match="1-D integer"):
        retrieval_metrics(img, txt, np.eye(3, dtype=int))
    with pytest.raises(ValueError, match="3-d vectors but text_emb has 2-d"):
        retrieval_metrics(img, np.ones((3, 2)), np.arange(3))
    with pytest.raises(ValueError, match="zero rows"):
        retrieval_metrics(np.zeros((3, 3)), txt, np.arange(3))
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(img, txt, np.arange(3), ks=(0,))
