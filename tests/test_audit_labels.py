"""Label issues (confident learning on out-of-sample probabilities) and caption alignment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlmops.audit.labels import (
    alignment_check,
    confident_learning,
    fold_ids,
    label_check,
    out_of_sample_probs,
    zero_shot_probs,
)


def blobs(n_classes: int = 5, per: int = 400, dim: int = 32, seed: int = 0, flip: float = 0.05):
    """Gaussian blobs with a fraction of labels flipped to a random other class."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_classes), per)
    x = rng.normal(size=(n_classes, dim))[truth] + 0.35 * rng.normal(size=(len(truth), dim))
    flipped = rng.choice(len(truth), int(flip * len(truth)), replace=False)
    noisy = truth.copy()
    noisy[flipped] = (truth[flipped] + rng.integers(1, n_classes, len(flipped))) % n_classes
    return x.astype(np.float32), truth, noisy, flipped


@pytest.mark.parametrize("method", ["knn", "logistic"])
def test_confident_learning_finds_flipped_labels(method: str) -> None:
    x, _, noisy, flipped = blobs()
    names = np.array([f"class{i}" for i in noisy])
    probs, classes = out_of_sample_probs(x, names, method=method)
    assert probs.shape == (len(x), 5) and list(classes) == [f"class{i}" for i in range(5)]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    mask, suggested, self_conf = confident_learning(probs, np.searchsorted(classes, names))
    hits = mask[flipped].sum()
    recall, precision = hits / len(flipped), hits / max(mask.sum(), 1)
    assert recall >= 0.8 and precision >= 0.8, (recall, precision)
    assert np.all(suggested[~mask] == np.searchsorted(classes, names)[~mask])
    np.testing.assert_allclose(self_conf, probs[np.arange(len(x)), np.searchsorted(classes, names)])


@pytest.mark.parametrize("method", ["knn", "logistic"])
def test_an_item_never_predicts_itself(method: str) -> None:
    x, truth, _, _ = blobs(n_classes=2, per=60, flip=0.0)
    labels = np.where(truth == 0, "a", "b").astype(object)
    x[0] = x[truth == 1].mean(axis=0)  # an "a" item sitting in the middle of the b blob
    labels[1] = "lonely"  # the only member of its class
    probs, classes = out_of_sample_probs(x, labels, method=method, folds=5)
    col = {c: i for i, c in enumerate(classes)}
    assert probs[0, col["b"]] > 0.9 > probs[0, col["a"]]
    assert probs[1, col["lonely"]] == probs[1].min() and probs[1, col["lonely"]] < 0.05


def test_fold_ids_stratify_and_handle_tiny_classes() -> None:
    y = np.array([0] * 50 + [1] * 2 + [2])
    folds = fold_ids(y, 5, seed=3)
    assert np.bincount(folds[y == 0], minlength=5).tolist() == [10] * 5
    assert folds[y == 1][0] != folds[y == 1][1]


def test_confident_learning_closed_form() -> None:
    clean_a, clean_b = [0.9, 0.1], [0.2, 0.8]
    probs = np.array([clean_a] * 5 + [clean_b] * 4 + [[0.85, 0.15], [0.6, 0.4]])
    labels = np.array([0] * 5 + [1] * 4 + [1, 1])
    # t_a = 0.9; t_b = mean(0.8 x 4, 0.15, 0.4) = 0.6: item 9 (p_a 0.85 < t_a) is not counted, item 10
    # (p_b 0.4 < 0.6, p_a 0.6 < 0.9) neither, so the joint has no off-diagonal mass: nothing flagged.
    mask, _, _ = confident_learning(probs, labels)
    assert not mask.any()
    probs[9] = [0.95, 0.05]  # now confidently a: C[b, a] = 1 (calibrated 6/5 x 1 -> 1 item)
    mask, suggested, self_conf = confident_learning(probs, labels)
    assert mask.tolist() == [False] * 9 + [True, False] and suggested[9] == 0
    assert self_conf[9] == pytest.approx(0.05)


def test_zero_shot_probs_is_a_scaled_softmax() -> None:
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(6, 8)), rng.normal(size=(3, 8))
    probs = zero_shot_probs(images, texts, 50.0)
    cos = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ (
        texts / np.linalg.norm(texts, axis=1, keepdims=True)
    ).T
    expected = np.exp(50 * cos) / np.exp(50 * cos).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-9)


def test_label_check_reports_flipped_records() -> None:
    x, truth, noisy, flipped = blobs(n_classes=3, per=100, seed=1)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(len(x))], "label": [f"c/{i}" for i in noisy]})
    frame.loc[0, "label"] = None
    probs, classes = out_of_sample_probs(x[1:], frame["label"][1:], method="knn")
    probs = np.vstack([np.full((1, 3), 1 / 3), probs])
    result = label_check(frame, probs, classes, source="knn")
    assert result.check == "labels" and result.metrics["label_issues"] == len(result.findings)
    assert result.metrics["label_issue_rate"] == pytest.approx(len(result.findings) / (len(x) - 1))
    found = {f.record_id: f for f in result.findings}
    caught = [i for i in flipped if f"r{i}" in found]
    assert len(caught) >= 0.8 * len(flipped) and len(found) <= 1.25 * len(flipped)
    example = found[f"r{caught[0]}"]
    assert example.kind == "label_issue" and example.evidence["given_label"] == f"c/{noisy[caught[0]]}"
    assert example.evidence["suggested_label"] == f"c/{truth[caught[0]]}"
    assert example.evidence["suggested_probability"] > example.evidence["self_confidence"]
    confidences = [f.evidence["self_confidence"] for f in result.findings]
    assert confidences == sorted(confidences)
    assert any("1 records without a known label" in n for n in result.notes)


def aligned_records(n_labels: int = 4, per: int = 50, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n_labels * per, dim))
    texts = images + 0.6 * rng.normal(size=images.shape)
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(len(images))],
            "texts": [[f"caption {i}", "extra"] for i in range(len(images))],
            "label": [f"l{i // per}" for i in range(len(images))],
        }
    )
    return frame, images, texts


def test_alignment_flags_swapped_captions() -> None:
    frame, images, texts = aligned_records()
    pairs = [(3, 77), (120, 180), (10, 11)]
    for i, j in pairs:
        texts[[i, j]] = texts[[j, i]]
        frame.loc[i, "texts"], frame.loc[j, "texts"] = frame.loc[j, "texts"], frame.loc[i, "texts"]
    result = alignment_check(frame, images, texts)
    flagged = {f.record_id: f for f in result.findings}
    swapped = {f"r{k}" for pair in pairs for k in pair}
    assert set(flagged) == swapped
    assert result.metrics == {"misaligned": 6, "misaligned_rate": 6 / len(frame), "swapped_captions": 0}
    f = flagged["r3"]
    assert f.kind == "misaligned_caption" and f.evidence["z"] < -3.5
    assert f.evidence["caption"] == "caption 77" and f.evidence["suggested_record"] == "r77"
    assert f.evidence["suggested_caption"] == "caption 3" and f.evidence["suggested_record_label"] == "l1"
    assert result.details["labels_scored_separately"] == 4 and result.details["z_threshold"] == -3.5


def exchange_frame(n: int = 2000) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "texts": [[f"caption {i}"] for i in range(n)],
            "label": [f"l{i // 500}" for i in range(n)],
        }
    )
    frame.loc[10, "texts"], frame.loc[11, "texts"] = ["caption 11"], ["caption 10"]
    return frame


def test_alignment_pairs_exchanged_captions_that_are_no_similarity_outliers() -> None:
    """Captions of very uneven quality (noise 0.1 to 2.5 x signal), so a caption on the wrong image is no
    robust-z outlier; but each of the two exchanged captions fits the other's image best, and the own
    captions of almost every other record rank better: both are reported as a pair."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2000, 32))
    texts = images + rng.uniform(0.1, 2.5, (2000, 1)) * rng.normal(size=images.shape)
    texts[[10, 11]] = texts[[11, 10]]
    result = alignment_check(exchange_frame(), images, texts)
    found = {f.record_id: f for f in result.findings}
    assert set(found) == {"r10", "r11"} and {f.kind for f in found.values()} == {"swapped_caption"}
    assert (
        found["r10"].evidence["partner"] == "r11" and found["r10"].evidence["partner_caption"] == "caption 10"
    )
    assert result.metrics["swapped_captions"] == 2 and result.metrics["misaligned"] == 2


def test_alignment_reports_no_exchange_the_data_cannot_prove() -> None:
    """Two related images exchange captions and each caption fits the other's image best; but with
    captions this noisy one record in twenty has some caption that fits its image better than its own,
    so that is no proof of an exchange (nor are the similarities outliers): nothing is reported."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2000, 32))
    images[11] = 0.7 * images[10] + np.sqrt(0.51) * images[11]
    texts = images + 0.8 * rng.normal(size=images.shape)
    texts[[10, 11]] = texts[[11, 10]]
    assert alignment_check(exchange_frame(), images, texts).findings == []


def test_alignment_skips_records_without_captions() -> None:
    frame, images, texts = aligned_records(n_labels=1, per=30)
    frame.at[0, "texts"] = []
    result = alignment_check(frame, images, texts, min_per_label=100)
    assert result.details["labels_scored_separately"] == 0 and result.metrics["misaligned"] == 0
    assert any("1 records without a caption" in n for n in result.notes)
    frame["texts"] = [[] for _ in range(len(frame))]
    assert alignment_check(frame, images, texts).skipped


def test_confirming_view_keeps_only_issues_both_views_see() -> None:
    """View A errs on set HA, view B on set HB; flipped labels are seen by both: only flips survive."""
    import pandas as pd

    from vlmops.audit.labels import label_check

    rng = np.random.default_rng(3)
    n, k = 400, 4
    true = rng.integers(0, k, n)
    given = true.copy()
    flips = rng.choice(n, 20, replace=False)
    given[flips] = (true[flips] + 1 + rng.integers(0, k - 1, 20)) % k
    others = np.setdiff1d(np.arange(n), flips)
    hard_a, hard_b = rng.choice(others, 20, replace=False), rng.choice(others, 20, replace=False)

    def view(hard: np.ndarray) -> np.ndarray:
        predicted = true.copy()
        predicted[hard] = (given[hard] + 1) % k  # this view is wrong here
        probs = np.full((n, k), 0.02)
        probs[np.arange(n), predicted] = 0.94
        return probs

    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "label": [str(c) for c in given]})
    classes = [str(c) for c in range(k)]
    alone = {f.record_id for f in label_check(frame, view(hard_a), classes, "a").findings}
    assert {f"r{i}" for i in hard_a} <= alone  # one view alone flags its own mistakes
    both = label_check(frame, view(hard_a), classes, "a+b", confirm=view(hard_b))
    flagged = {f.record_id for f in both.findings}
    overlap = {f"r{i}" for i in set(hard_a) & set(hard_b)}
    assert flagged - overlap == {f"r{i}" for i in flips}
    suggestions = {f.record_id: f.evidence["suggested_label"] for f in both.findings}
    assert all(suggestions[f"r{i}"] == str(true[i]) for i in flips)


def test_caption_contradictions_flag_captions_only_the_text_view_doubts() -> None:
    """Swapped captions: the caption view contradicts the label while the image view agrees with it."""
    import pandas as pd

    from vlmops.audit.label_views import LabelViews, caption_contradictions

    rng = np.random.default_rng(5)
    n, k = 300, 3
    y = rng.integers(0, k, n)
    swapped = rng.choice(n, 12, replace=False)
    flipped = np.setdiff1d(rng.choice(n, 30, replace=False), swapped)[:10]

    def onehot(pred: np.ndarray) -> np.ndarray:
        probs = np.full((n, k), 0.05)
        probs[np.arange(n), pred] = 0.9
        return probs

    text_pred, image_pred = y.copy(), y.copy()
    text_pred[swapped] = (y[swapped] + 1) % k  # the caption belongs to another class
    text_pred[flipped] = (y[flipped] + 2) % k  # a wrong label: both views disagree with it
    image_pred[flipped] = (y[flipped] + 2) % k
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "label": [str(c) for c in y],
            "texts": [[f"t{i}"] for i in range(n)],
        }
    )
    image_probs = onehot(image_pred)
    # Wrong labels the image view only leans against: it backs the caption's class (0.5) over the label
    # (0.45), too weakly to be a confident label issue. The caption is right, so no caption finding.
    leaning = np.setdiff1d(np.setdiff1d(np.arange(n), swapped), flipped)[:8]
    text_pred[leaning] = (y[leaning] + 1) % k
    image_probs[leaning] = 0.05
    image_probs[leaning, y[leaning]] = 0.45
    image_probs[leaning, (y[leaning] + 1) % k] = 0.5
    views = LabelViews(np.arange(n), ["0", "1", "2"], y, image_probs, onehot(text_pred), None, "knn")
    found = caption_contradictions(frame, views)
    assert {f.record_id for f in found} == {f"r{i}" for i in swapped}
    assert all(f.evidence["caption_suggests"] == str((int(f.evidence["label"]) + 1) % k) for f in found)
    no_text = LabelViews(np.arange(n), ["0", "1", "2"], y, onehot(image_pred), None, None, "knn")
    assert caption_contradictions(frame, no_text) == []


def test_caption_rank_share_counts_distinct_captions_that_fit_better() -> None:
    from vlmops.audit.label_views import caption_rank_share

    image = np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    text = np.array([[0, 1.0, 0], [1.0, 0, 0], [1.0, 0, 0]])  # records 0 and 1 swapped; 2 is right
    share = caption_rank_share(image, text, ["p", "q", "q"])  # two distinct captions: p and q
    assert share.tolist() == [0.5, 0.5, 0.0]  # q is counted once, and ties are not "better"


def test_peers_with_the_same_caption_decide_whether_it_backs_the_label() -> None:
    from vlmops.audit.label_views import peers_back_label

    texts = ["cat", "cat", "cat", "dog", "dog", "bird"]
    y = np.array([0, 0, 1, 2, 2, 3])  # the third "cat" sits on a record labelled 1: a swapped caption
    assert peers_back_label(texts, y).tolist() == [True, True, False, True, True, False]  # "bird": no peer


def test_a_caption_its_exact_twins_back_is_not_a_contradiction() -> None:
    """The caption view may doubt a caption whose identical twins all carry the record's label."""
    import pandas as pd

    from vlmops.audit.label_views import LabelViews, caption_contradictions

    n, k = 60, 3
    y = np.arange(n) % k
    texts = [f"t{i}" for i in range(n)]
    texts[3] = texts[6] = texts[9] = "shared"  # records 3, 6, 9 all labelled 0 share one caption
    text_pred = y.copy()
    text_pred[[3, 30]] = 1  # the caption view doubts records 3 and 30
    probs_t = np.full((n, k), 0.05)
    probs_t[np.arange(n), text_pred] = 0.9
    probs_i = np.full((n, k), 0.05)
    probs_i[np.arange(n), y] = 0.9
    frame = pd.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "label": y.astype(str), "texts": [[t] for t in texts]}
    )
    views = LabelViews(np.arange(n), ["0", "1", "2"], y, probs_i, probs_t, None, "knn")
    assert {f.record_id for f in caption_contradictions(frame, views)} == {"r30"}


def test_caption_contradictions_need_a_poorly_ranked_caption_when_embeddings_are_given() -> None:
    import pandas as pd

    from vlmops.audit.label_views import LabelViews, caption_contradictions

    rng = np.random.default_rng(6)
    n, k, d = 200, 3, 16
    y = rng.integers(0, k, n)
    swapped, text_wrong = np.arange(0, 10), np.arange(10, 20)  # the caption view errs on 10..19 only
    text_pred = y.copy()
    text_pred[np.r_[swapped, text_wrong]] = (y[np.r_[swapped, text_wrong]] + 1) % k
    probs_t = np.full((n, k), 0.05)
    probs_t[np.arange(n), text_pred] = 0.9
    probs_i = np.full((n, k), 0.05)
    probs_i[np.arange(n), y] = 0.9
    image = rng.normal(size=(n, d))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    noise = rng.normal(size=(n, d))
    text = image + 0.3 * noise / np.linalg.norm(noise, axis=1, keepdims=True)  # captions match their image
    text[swapped] = -image[swapped] + 0.3 * noise[swapped]  # ... except the swapped ones: far off
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "label": [str(c) for c in y],
            "texts": [[f"t{i}"] for i in range(n)],
        }
    )
    views = LabelViews(np.arange(n), ["0", "1", "2"], y, probs_i, probs_t, text, "knn")
    without = {f.record_id for f in caption_contradictions(frame, views)}
    assert without == {f"r{i}" for i in np.r_[swapped, text_wrong]}
    with_sim = {f.record_id for f in caption_contradictions(frame, views, image)}
    # the swapped captions fit their images worse than almost every caption; the others among the best
    assert with_sim == {f"r{i}" for i in swapped}


def test_low_similarity_captions_that_read_as_their_own_label_are_set_aside() -> None:
    """A caption that agrees with its label but fits its image poorly points at the model, not the data."""
    import pandas as pd

    from vlmops.audit.findings import CheckResult, Finding
    from vlmops.audit.label_views import LabelViews, add_contradictions

    frame = pd.DataFrame(
        {"id": ["r0", "r1", "r2", "r3"], "label": ["a", "a", "b", "b"], "texts": [["t"]] * 4}
    )
    reads = np.array([0, 1, 1, 1])  # r0's caption reads as its label a; r1's as b although labelled a
    text_probs = np.eye(2)[reads] * 0.8 + 0.1
    views = LabelViews(
        np.arange(4), ["a", "b"], np.array([0, 0, 1, 1]), np.eye(2)[[0, 0, 1, 1]], text_probs, None, "knn"
    )
    outliers = [
        Finding(r, "alignment", "misaligned_caption", "warning", "poor fit", {}) for r in ("r0", "r1")
    ]
    result = add_contradictions(CheckResult("alignment", findings=outliers), frame, views)
    kept = {f.record_id for f in result.findings if f.kind == "misaligned_caption"}
    assert kept == {"r1"}
    assert result.details["model_weak_labels"] == {"a": 1} and "set aside" in result.notes[0]


def test_labels_no_view_supports_are_flagged_even_when_confident_learning_counts_them_nowhere() -> None:
    """Probability spread over other classes clears no per-class threshold, so confident learning alone
    misses such an item; both views giving the label ~0 flags it, one view alone does not."""
    from vlmops.audit.labels import both_views_flag

    n, k = 200, 4
    y = np.arange(n) % k
    confident = np.full((n, k), 0.02)
    confident[np.arange(n), y] = 0.94
    spread = np.full(k, 0.33)
    first, second = confident.copy(), confident.copy()
    both, only_first = np.arange(0, 10), np.arange(10, 20)
    for i in both:
        first[i] = second[i] = spread
        first[i, y[i]] = second[i, y[i]] = 0.001
    for i in only_first:
        first[i] = spread
        first[i, y[i]] = 0.001
    assert not confident_learning(first, y)[0][both].any()  # the case confident learning cannot see
    flagged = both_views_flag(first, second, y)
    assert set(np.flatnonzero(flagged)) == set(both)


def test_caption_contradictions_include_captions_the_text_view_gives_no_support() -> None:
    """A caption whose neighbours spread over other classes gets no confident-learning count; giving the
    label almost nothing still makes it a contradiction when the image backs the label."""
    from vlmops.audit.label_views import LabelViews, caption_contradictions
    from vlmops.audit.labels import confident_learning

    n, k = 200, 4
    y = np.arange(n) % k
    confident = np.full((n, k), 0.02)
    confident[np.arange(n), y] = 0.94
    text = confident.copy()
    spread = np.arange(10)
    text[spread] = 0.333
    text[spread, y[spread]] = 0.001
    assert not confident_learning(text, y)[0][spread].any()
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "label": [str(c) for c in y],
            "texts": [[f"t{i}"] for i in range(n)],
        }
    )
    views = LabelViews(np.arange(n), [str(c) for c in range(k)], y, confident, text, None, "knn")
    assert {f.record_id for f in caption_contradictions(frame, views)} == {f"r{i}" for i in spread}


def test_an_exact_duplicate_does_not_outvote_every_other_neighbour() -> None:
    """Nine neighbours at cosine 0.9 carry label 0, one exact twin label 1: the nine still win (with
    scikit-learn-style 1/distance weights the twin at distance 0 would take all the weight)."""
    from vlmops.audit.labels import _knn_fold

    angle = np.arccos(0.9)
    near = np.array([[np.cos(angle), np.sin(angle) * np.cos(t), np.sin(angle) * np.sin(t)] for t in range(9)])
    train = np.vstack([near, [[1.0, 0.0, 0.0]]])
    probs = _knn_fold(train, np.array([0] * 9 + [1]), np.array([[1.0, 0.0, 0.0]]), 2, k=10, weighted=True)
    assert probs[0, 0] > 0.6 > probs[0, 1]


def test_a_label_too_rare_to_be_supported_is_not_an_issue_for_lack_of_support() -> None:
    """Out-of-sample views cannot support a label nobody else carries: such records are not flagged for
    lack of support; a label carried by more than MIN_PEERS other records is."""
    from vlmops.audit.labels import MIN_PEERS, both_views_flag, unsupported

    n, k = 60, 5
    y = np.concatenate([np.arange(n - 1 - MIN_PEERS - 1) % 3, [3] * (MIN_PEERS + 1), [4]])
    probs = np.full((len(y), k), 0.001)
    probs[np.arange(len(y)), np.where(y < 3, y, 0)] = 0.996  # the rare labels 3 and 4 get nothing
    rare = np.flatnonzero(y >= 3)
    assert not unsupported(probs, y)[y == 4].any() and unsupported(probs, y)[y == 3].all()
    flagged = both_views_flag(probs, probs.copy(), y)
    assert set(np.flatnonzero(flagged)) & set(rare) == set(np.flatnonzero(y == 3))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_label_issues_need_look_alikes_that_agree_on_another_label() -> None:
    """One record per concept (neighbours far and unrelated): no view supports many labels, yet nothing is
    proven, so nothing is reported. Concepts drawn five times (look-alikes at cosine ~0.9): a record whose
    label was flipped is contradicted by its look-alikes and is still reported."""
    from vlmops.audit.labels import LOOKALIKE_PRIOR, label_check

    rng = np.random.default_rng(0)
    dim, n_labels = 64, 12
    # clean: 240 distinct concepts, 20 per label; image and caption embeddings unrelated to the label
    y_clean = np.repeat(np.arange(n_labels), 20)
    img_clean, txt_clean = _unit(rng.normal(size=(240, dim))), _unit(rng.normal(size=(240, dim)))
    # faulty: 48 concepts, 4 per label, 5 look-alike images (and captions) each; 12 labels flipped
    y_true = np.repeat(np.repeat(np.arange(n_labels), 4), 5)
    centres_i, centres_t = rng.normal(size=(48, dim)), rng.normal(size=(48, dim))
    concept = np.repeat(np.arange(48), 5)
    img_faulty = _unit(centres_i[concept] + 0.3 * rng.normal(size=(240, dim)))
    txt_faulty = _unit(centres_t[concept] + 0.3 * rng.normal(size=(240, dim)))
    flipped = rng.choice(240, 12, replace=False)
    y_faulty = y_true.copy()
    y_faulty[flipped] = (y_true[flipped] + rng.integers(1, n_labels, 12)) % n_labels

    def findings(img: np.ndarray, txt: np.ndarray, y: np.ndarray, gate: bool) -> set[int]:
        labels = [f"l{c:02d}" for c in y]
        frame = pd.DataFrame({"id": [str(i) for i in range(len(y))], "label": labels})
        image, classes = out_of_sample_probs(img, labels)
        caption, _ = out_of_sample_probs(txt, labels)
        evidence = None
        if gate:
            evidence = (out_of_sample_probs(img, labels, prior=LOOKALIKE_PRIOR)[0]
                        + out_of_sample_probs(txt, labels, prior=LOOKALIKE_PRIOR)[0]) / 2  # fmt: skip
        result = label_check(frame, image, classes, "knn", confirm=caption, evidence=evidence)
        return {int(f.record_id) for f in result.findings}

    assert len(findings(img_clean, txt_clean, y_clean, gate=False)) >= 5  # the false alarms of old
    assert findings(img_clean, txt_clean, y_clean, gate=True) == set()
    before = findings(img_faulty, txt_faulty, y_faulty, gate=False) & set(flipped)
    found = findings(img_faulty, txt_faulty, y_faulty, gate=True)
    assert before <= found and len(found & set(flipped)) >= 10 and len(found - set(flipped)) <= 2


def test_caption_findings_need_evidence_that_the_caption_belongs_elsewhere() -> None:
    """A caption the caption view doubts is reported only where its look-alike captions (or the records
    with the very same caption) point at another label; without that (one record per concept) neither a
    contradiction nor a similarity outlier is reported."""
    from vlmops.audit.findings import CheckResult, Finding
    from vlmops.audit.label_views import LabelViews, add_contradictions

    rng = np.random.default_rng(7)
    n, k = 300, 3
    y = rng.integers(0, k, n)
    doubted = rng.choice(n, 30, replace=False)
    proven, twin_proven, unproven = doubted[:10], doubted[10:12], doubted[12:]

    def probs(pred: np.ndarray, high: float = 0.9) -> np.ndarray:
        out = np.full((n, k), (1 - high) / (k - 1))
        out[np.arange(n), pred] = high
        return out

    text_pred = y.copy()
    text_pred[doubted] = (y[doubted] + 1) % k  # the caption view reads every doubted caption elsewhere
    lookalike = probs(y)
    lookalike[proven] = probs((y + 1) % k, 0.8)[proven]  # close look-alike captions agree on another label
    lookalike[np.r_[twin_proven, unproven]] = 1 / k  # far, unrelated neighbours: no evidence
    texts = [f"t{i}" for i in range(n)]
    donors = [i for i in range(n) if i not in set(doubted) and y[i] != y[twin_proven[0]]][:1]
    donors += [i for i in range(n) if i not in set(doubted) and y[i] != y[twin_proven[1]]][1:2]
    for record, donor in zip(twin_proven, donors, strict=True):
        texts[record] = texts[donor]  # the same caption on a record of another label
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "label": [str(c) for c in y],
                          "texts": [[t] for t in texts]})  # fmt: skip
    views = LabelViews(np.arange(n), ["0", "1", "2"], y, probs(y), probs(text_pred), None, "knn",
                       caption_lookalike=lookalike)  # fmt: skip
    outliers = [f"r{proven[0]}", f"r{unproven[0]}"]
    findings = [Finding(r, "alignment", "misaligned_caption", "warning", "poor fit", {}) for r in outliers]
    result = add_contradictions(CheckResult("alignment", findings=findings), frame, views)
    kinds = {f.record_id: f.kind for f in result.findings}
    assert kinds[f"r{proven[0]}"] == "misaligned_caption"
    assert set(kinds) == {f"r{i}" for i in np.r_[proven, twin_proven]}
