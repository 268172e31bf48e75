"""Tiered accuracy: hand-made hierarchical credit, scikit-learn agreement, monotonicity, validation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from vlmops.evaluate.tiers import TierResult, tiered_accuracy, tiers_of, truncate

CLASSES = ["a/x/1", "a/x/2", "a/y/3", "b/z/4"]
# img0 right everywhere; img1 wrong concept, right subcategory; img2 wrong subcategory, right category;
# img3 wrong category. Second places chosen so top-2 differs from top-1.
SCORES = np.array(
    [
        [0.9, 0.1, 0.2, 0.0],  # ranking a/x/1, a/y/3, ...
        [0.5, 0.9, 0.0, 0.1],  # ranking a/x/2, a/x/1, ...
        [0.0, 0.1, 0.9, 0.5],  # ranking a/y/3, b/z/4, ...
        [0.9, 0.0, 0.0, 0.1],  # ranking a/x/1, b/z/4, ...
    ]
)
TRUTH = ["a/x/1", "a/x/1", "a/x/2", "b/z/4"]


def by_depth(results: list[TierResult]) -> dict[int, TierResult]:
    return {r.depth: r for r in results}


def test_truncate_and_tiers_of() -> None:
    assert truncate("a/b/c", 1) == "a"
    assert truncate("a/b/c", 2) == "a/b"
    assert truncate("a/b/c", 3) == "a/b/c"
    assert tiers_of(["a/b/c", "d/e/f"]) == 3
    assert tiers_of(["cat", "dog"]) == 1
    with pytest.raises(ValueError, match=r"'d/e' has 2 tiers.*same number"):
        tiers_of(["a/b/c", "d/e"])
    with pytest.raises(ValueError, match="empty part"):
        tiers_of(["a//c"])
    with pytest.raises(ValueError, match="positive"):
        truncate("a/b", 0)


def test_hierarchical_credit_exact_numbers() -> None:
    res = tiered_accuracy(
        SCORES, CLASSES, TRUTH, ks=(1, 2, 5), tier_names=("category", "subcategory", "concept")
    )
    assert [r.tier for r in res] == ["concept", "subcategory", "category"]
    assert [r.depth for r in res] == [3, 2, 1]
    tier = by_depth(res)
    assert [tier[d].top1 for d in (3, 2, 1)] == [0.25, 0.5, 0.75]
    assert [tier[d].topk[2] for d in (3, 2, 1)] == [0.75, 0.75, 1.0]
    assert all(tier[d].topk[5] == 1.0 and tier[d].top5 == 1.0 for d in (3, 2, 1))  # k clipped to 4 classes
    assert [tier[d].n_classes for d in (3, 2, 1)] == [4, 3, 2]
    # concept: a/x/1 1/2, a/x/2 0, b/z/4 0; subcategory: a/x 2/3, b/z 0; category: a 1, b 0
    assert tier[3].mean_per_class_recall == pytest.approx(1 / 6)
    assert tier[2].mean_per_class_recall == pytest.approx(1 / 3)
    assert tier[1].mean_per_class_recall == pytest.approx(0.5)
    assert all(r.n == 4 for r in res)


def test_wrong_concept_right_subcategory_and_wrong_subcategory_right_category() -> None:
    one = np.array([[0.1, 0.9, 0.0, 0.0]])
    tier = by_depth(tiered_accuracy(one, CLASSES, ["a/x/1"], ks=(1,)))
    assert (tier[3].top1, tier[2].top1, tier[1].top1) == (0.0, 1.0, 1.0)
    one = np.array([[0.1, 0.0, 0.9, 0.0]])
    tier = by_depth(tiered_accuracy(one, CLASSES, ["a/x/1"], ks=(1,)))
    assert (tier[3].top1, tier[2].top1, tier[1].top1) == (0.0, 0.0, 1.0)


def test_ties_broken_by_class_index() -> None:
    tier = by_depth(tiered_accuracy(np.zeros((2, 4)), CLASSES, ["a/x/1", "b/z/4"], ks=(1, 3)))
    assert tier[3].top1 == 0.5  # class 0 predicted for both
    assert tier[3].topk[3] == 0.5  # b/z/4 (index 3) is 4th under index order


def test_default_tier_names_and_to_dict() -> None:
    res = tiered_accuracy(SCORES, CLASSES, TRUTH)
    assert [r.tier for r in res] == ["depth3", "depth2", "depth1"]
    d = res[0].to_dict()
    assert set(d) == {"tier", "depth", "n", "n_classes", "top1", "top5", "mean_per_class_recall"}
    json.dumps(d)


def random_problem(seed: int, n: int = 300) -> tuple[np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(seed)
    classes = [f"c{i % 3}/s{i % 5}/k{i}" for i in range(15)]
    truth = [classes[j] for j in rng.integers(0, len(classes), size=n)]
    return rng.normal(size=(n, len(classes))), classes, truth


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sklearn_at_every_tier(seed: int) -> None:
    scores, classes, truth = random_problem(seed)
    pred = [classes[j] for j in scores.argmax(axis=1)]
    tier = by_depth(tiered_accuracy(scores, classes, truth))
    assert tier[3].top1 == pytest.approx(accuracy_score(truth, pred))
    for d in (3, 2, 1):
        t_true, t_pred = [truncate(x, d) for x in truth], [truncate(x, d) for x in pred]
        assert tier[d].top1 == pytest.approx(accuracy_score(t_true, t_pred))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = balanced_accuracy_score(t_true, t_pred)
        assert tier[d].mean_per_class_recall == pytest.approx(expected)


def test_topk_monotone_in_k_and_coarser_tiers_never_worse() -> None:
    scores, classes, truth = random_problem(2)
    ks = (1, 2, 3, 5, 10, 15)
    res = tiered_accuracy(scores, classes, truth, ks=ks)
    for r in res:
        vals = [r.topk[k] for k in ks]
        assert vals == sorted(vals) and vals[0] == r.top1 and vals[-1] == 1.0
    tier = by_depth(res)
    for k in ks:
        assert tier[3].topk[k] <= tier[2].topk[k] <= tier[1].topk[k]


def test_topk_against_brute_force() -> None:
    scores, classes, truth = random_problem(3, n=80)
    tier = by_depth(tiered_accuracy(scores, classes, truth, ks=(4,)))
    for d in (3, 2, 1):
        hits = [
            any(truncate(classes[j], d) == truncate(t, d) for j in np.argsort(-row)[:4])
            for row, t in zip(scores, truth, strict=True)
        ]
        assert tier[d].topk[4] == pytest.approx(np.mean(hits))


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match=r"not among class_labels.*'q/q/1'.*'q/q/5'") as err:
        tiered_accuracy(np.zeros((7, 4)), CLASSES, [f"q/q/{i}" for i in range(1, 8)])
    assert "q/q/6" not in str(err.value)  # at most 5 named
    with pytest.raises(ValueError, match="shape"):
        tiered_accuracy(np.zeros((3, 4)), CLASSES, TRUTH)
    with pytest.raises(ValueError, match="tiers"):
        tiered_accuracy(np.zeros((1, 2)), ["a/b", "a/b/c"], ["a/b"])
    with pytest.raises(ValueError, match="tier_names"):
        tiered_accuracy(SCORES, CLASSES, TRUTH, tier_names=("a", "b"))
    with pytest.raises(ValueError, match="unique"):
        tiered_accuracy(np.zeros((1, 2)), ["a/b", "a/b"], ["a/b"])
    with pytest.raises(ValueError, match="ks"):
        tiered_accuracy(SCORES, CLASSES, TRUTH, ks=(0,))
    with pytest.raises(ValueError, match="NaN"):
        tiered_accuracy(np.full((4, 4), np.nan), CLASSES, TRUTH)
