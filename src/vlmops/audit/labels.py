"""Label errors and caption-image misalignment.

Label issues come from confident learning (Northcutt, Jiang & Chuang, JAIR 2021) on probabilities
the item itself did not shape: out-of-fold k-NN or logistic regression on embeddings, or zero-shot
probabilities of a vision-language model. Misaligned captions are records whose caption-image cosine is
a robust-z outlier low within their label (or the whole data set).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlmops.audit.findings import CheckResult, Finding
from vlmops.audit.stats import MAD_TO_SIGMA, robust_z, row_blocks
from vlmops.audit.vote_probs import VoteProbs, cells, confident_classes, other_class, row_argmax
from vlmops.errors import DataError

CHUNK = 2048
MIN_DISTANCE = 0.05  # k-NN neighbours closer than this (cosine distance) vote alike


def _normalise(x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    x = np.asarray(x, dtype=dtype)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def fold_ids(y: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Stratified fold id per item: each class's members dealt round-robin from a random start.

    A class with fewer members than folds puts each member in a different fold, so every member is
    still predicted by a model trained on the others (a singleton's class is then unseen: the
    prediction falls back to the smoothing prior).
    """
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype=np.int64)
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        out[members] = (rng.integers(folds) + np.arange(len(members))) % folds
    return out


def _knn_fold(
    train: np.ndarray,
    y_train: np.ndarray,
    test: np.ndarray,
    n_classes: int,
    k: int,
    weighted: bool,
    prior: float | None = None,
    everything: np.ndarray | None = None,
    sparse: bool = False,
) -> np.ndarray | VoteProbs:
    """k-NN class probabilities on cosine similarity (`everything`: all folds' rows, for the index).

    Each of the k neighbours votes with weight 1 / max(cosine distance, `MIN_DISTANCE`) when `weighted`,
    else 1; one more pseudo-vote of mean weight is spread evenly over the classes (Laplace smoothing), so
    no class has probability 0. The floor is where this departs from scikit-learn's weights="distance",
    which gives neighbours at distance 0 all the weight: with exact duplicates (the same caption on four
    vendors' emoji) one twin carrying another label then decides alone. The floor lets every neighbour
    within cosine 0.95 vote alike; on the label views of `bench/audit_recall.py`'s seed-1 faults (a one-off
    analysis script, not kept) it lifted flipped-label precision 0.830 -> 0.844 and swapped-caption
    precision 0.913 -> 0.946 at equal recall.

    With `prior` the pseudo-vote has that fixed weight instead (e.g. `LOOKALIKE_PRIOR`): then distant
    neighbours, whatever their number, cannot outweigh it, and the probabilities measure the evidence of
    close look-alikes rather than of whoever happens to be nearest.

    With `sparse` the result is a `VoteProbs` (the voted classes and the floor per row, the very same
    values): memory O(items x k) instead of O(items x classes); each chunk is dense only while computed.
    """
    from vlmops.audit.neighbours import top_k

    k = min(k, len(train))
    if sparse:
        cols = np.full((len(test), max(k, 1)), -1, dtype=np.int32)
        values = np.full((len(test), max(k, 1)), -np.inf)
        floor = np.empty(len(test), dtype=np.float64)
    else:
        probs = np.empty((len(test), n_classes), dtype=np.float64)
    neighbours, similarities = top_k(test, train, k, block=CHUNK, train=everything)
    for start in range(0, len(test), CHUNK):
        top, near = neighbours[start : start + CHUNK], similarities[start : start + CHUNK]
        weight = 1.0 / np.clip(1.0 - near, MIN_DISTANCE, None) if weighted else np.ones(top.shape)
        votes = np.zeros((len(top), n_classes))
        np.add.at(votes, (np.repeat(np.arange(len(top)), k), y_train[top].ravel()), weight.ravel())
        total = votes.sum(axis=1, keepdims=True) / k  # one neighbour's mean weight = one pseudo-vote
        if prior is not None:
            total = np.full_like(total, prior)
        denominator = votes.sum(axis=1, keepdims=True) + total
        chunk = (votes + total / n_classes) / denominator
        if not sparse:
            probs[start : start + CHUNK] = chunk
            continue
        packed = VoteProbs.pack(votes > 0, chunk, (total / n_classes / denominator)[:, 0], cols.shape[1])
        cols[start : start + CHUNK], values[start : start + CHUNK] = packed.cols, packed.values
        floor[start : start + CHUNK] = packed.floor
    return VoteProbs(cols, values, floor, n_classes) if sparse else probs


def _logistic_fold(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, n_classes: int, seed: int
) -> np.ndarray:
    """Multinomial logistic regression on standardised embeddings; classes unseen in the fold get 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probs = np.zeros((len(test), n_classes), dtype=np.float64)
    seen = np.unique(y_train)
    if len(seen) == 1:
        probs[:, seen[0]] = 1.0
        return probs
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(train.astype(np.float64), y_train)
    probs[:, model.classes_] = model.predict_proba(test.astype(np.float64))
    return probs


def out_of_sample_probs(
    embeddings: np.ndarray,
    labels: Sequence,
    method: str = "knn",
    folds: int = 5,
    seed: int = 0,
    k: int = 10,
    weighted: bool = True,
    prior: float | None = None,
    sparse: bool = False,
) -> tuple[np.ndarray | VoteProbs, np.ndarray]:
    """Out-of-fold class probabilities (n, c) for every item and the sorted class names.

    Folds are stratified by label (`fold_ids`), so an item's probabilities come from a k-NN vote or a
    logistic regression fitted without it. `prior` (k-NN only): the weight of the smoothing pseudo-vote,
    see `_knn_fold`. `sparse` (k-NN only): a `VoteProbs` of the same values, O(n x k) memory.
    """
    if method not in ("knn", "logistic"):
        raise ValueError(f"method must be 'knn' or 'logistic', got {method!r}")
    x = _normalise(embeddings)
    labels = list(labels)
    if any(v is None or v != v for v in labels):
        raise DataError("labels contain missing values; drop unlabelled records before out_of_sample_probs")
    classes, y = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    if len(x) != len(y):
        raise DataError(f"{len(x)} embeddings but {len(y)} labels; pass one label per embedding")
    folds = max(2, min(folds, len(y)))
    fold = fold_ids(y, folds, seed)
    if sparse and method != "knn":
        raise ValueError("sparse probabilities are for method='knn' only")
    if sparse:
        return _sparse_knn(x, y, fold, folds, len(classes), k, weighted, prior), classes
    probs = np.zeros((len(y), len(classes)), dtype=np.float64)
    for test, train in _fold_splits(fold, folds):
        if method == "knn":
            probs[test] = _knn_fold(x[train], y[train], x[test], len(classes), k, weighted, prior, x)
        else:
            probs[test] = _logistic_fold(x[train], y[train], x[test], len(classes), seed)
    return probs, classes


def _fold_splits(fold: np.ndarray, folds: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(test, train) row masks of each fold that has rows on both sides."""
    for f in range(folds):
        test, train = fold == f, fold != f
        if test.any() and train.any():
            yield test, train


def _sparse_knn(
    x: np.ndarray,
    y: np.ndarray,
    fold: np.ndarray,
    folds: int,
    n_classes: int,
    k: int,
    weighted: bool,
    prior: float | None,
) -> VoteProbs:
    """`out_of_sample_probs`'s k-NN folds as one VoteProbs (rows no fold predicts stay 0, as dense)."""
    width = max(1, min(k, len(y)))
    cols = np.full((len(y), width), -1, dtype=np.int32)
    values = np.full((len(y), width), -np.inf)
    floor = np.zeros(len(y), dtype=np.float64)
    for test, train in _fold_splits(fold, folds):
        part = _knn_fold(x[train], y[train], x[test], n_classes, k, weighted, prior, x, sparse=True)
        w = part.cols.shape[1]
        cols[test, :w], values[test, :w], floor[test] = part.cols, part.values, part.floor
    return VoteProbs(cols, values, floor, n_classes)


def zero_shot_probs(image_emb: np.ndarray, class_emb: np.ndarray, logit_scale: float) -> np.ndarray:
    """Softmax over classes of logit_scale x cosine(image, class text)."""
    logits = _normalise(image_emb, np.float64) @ _normalise(class_emb, np.float64).T
    logits *= float(logit_scale)  # in place from here: one (n, classes) matrix
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


@dataclass(frozen=True)
class ZeroShot:
    """`zero_shot_probs` of the images `image_emb[rows]` among the classes `class_emb`, computed on demand
    in blocks of `stats.ROW_BLOCK` rows: the checks read a few cells per row, so the (n, classes) matrix
    is never held (at 1,923 classes it is 15 KiB per image)."""

    image_emb: np.ndarray  # every record's embedding; the view's records are `rows`
    rows: np.ndarray
    class_emb: np.ndarray
    logit_scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), len(self.class_emb))

    def cells(self, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
        """For each array `c` of `cols` (one class per row): the probabilities at (row r, c[r])."""
        out = tuple(np.empty(len(self.rows), dtype=np.float64) for _ in cols)
        for block in row_blocks(len(self.rows)):
            probs = zero_shot_probs(self.image_emb[self.rows[block]], self.class_emb, self.logit_scale)
            for target, c in zip(out, cols, strict=True):
                target[block] = probs[np.arange(len(probs)), np.asarray(c)[block]]
        return out


def _confident_joint(probs: np.ndarray | VoteProbs, labels: np.ndarray) -> np.ndarray:
    """Calibrated confident joint C[given, confident] (rows sum to the given-label counts)."""
    n_classes = probs.shape[1]
    counts = np.bincount(labels, minlength=n_classes)
    sums = np.bincount(labels, weights=cells(probs, np.arange(len(labels)), labels), minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        thresholds = np.where(counts > 0, sums / counts, np.inf)  # no items labelled j: never confident j
    if isinstance(probs, VoteProbs):
        confident, counted = confident_classes(probs, thresholds - 1e-12)
    else:
        confident = np.empty(len(labels), dtype=np.int64)
        counted = np.empty(len(labels), dtype=bool)
        for block in row_blocks(len(labels)):  # no full-size temporaries
            above = probs[block] >= thresholds - 1e-12
            confident[block] = np.where(above, probs[block], -1.0).argmax(axis=1)
            counted[block] = above.any(axis=1)
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (labels[counted], confident[counted]), 1.0)
    rows = joint.sum(axis=1, keepdims=True)
    return np.where(rows > 0, joint / np.where(rows > 0, rows, 1.0) * counts[:, None], 0.0)


def confident_learning(
    probs: np.ndarray | VoteProbs, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label issues by confident learning: (issue mask, suggested class index, self-confidence).

    Variant (as cleanlab's ``prune_by_noise_rate``): per-class thresholds t_j = mean p_j over items
    labelled j (t = inf for a class nobody carries); the confident joint counts item x (given i) under
    j = argmax of the p_k(x) >= t_k, calibrated so row i sums to n_i. For each off-diagonal cell (i, j)
    the round(C[i, j]) items labelled i with the largest margin p_j - p_i are flagged, keeping at least
    one item per class; items whose argmax is their given label are never flagged. Suggested = argmax p
    for flagged items, the given label otherwise; self-confidence = p_given (rank issues by it, lowest
    first).
    """
    if not isinstance(probs, VoteProbs):
        probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(probs.shape) != 2 or len(probs) != len(labels):
        raise DataError(f"probs must be (n, c) with n = {len(labels)} labels, got shape {probs.shape}")
    n, n_classes = probs.shape
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"labels must be class indices in [0, {n_classes}); map names to columns first")
    joint = _confident_joint(probs, labels)
    remove = np.rint(joint).astype(np.int64)
    np.fill_diagonal(remove, 0)
    counts = np.bincount(labels, minlength=n_classes)
    mask = np.zeros(n, dtype=bool)
    self_conf = cells(probs, np.arange(n), labels)
    for i in np.flatnonzero(remove.sum(axis=1)):
        members = np.flatnonzero(labels == i)
        budget = max(0, counts[i] - 1)  # keep at least one item per class
        for j in np.argsort(-remove[i]):
            take = min(remove[i, j], budget)
            if take <= 0:
                break
            margin = cells(probs, members, np.full(len(members), j)) - cells(
                probs, members, np.full(len(members), i)
            )
            mask[members[np.argsort(-margin, kind="stable")[:take]]] = True
            budget -= take
    argmax = row_argmax(probs)
    mask &= argmax != labels
    suggested = np.where(mask, argmax, labels)
    return mask, suggested, self_conf


UNSUPPORTED = 0.02  # a view gives the given label essentially no probability
LOOKALIKE_PRIOR = 10.0  # pseudo-vote weight of look-alike evidence: one neighbour at cosine 0.9
ALTERNATIVE = 0.4  # look-alike evidence for one other label that a label issue needs
CAPTION_ALTERNATIVE = 0.5  # the same from the captions alone (more probable than all others together)
MIN_PEERS = 2  # other records of a label needed before "no view supports it" means anything


def unsupported(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Items whose given label gets less than `UNSUPPORTED` probability although at least `MIN_PEERS`
    other items carry it (an out-of-sample model cannot support a label it has (almost) never seen)."""
    counts = np.bincount(y, minlength=probs.shape[1])
    return (cells(probs, np.arange(len(y)), y) < UNSUPPORTED) & (counts[y] > MIN_PEERS)


def both_views_flag(first: np.ndarray, second: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Label issues seen by two views: confident learning flags both and the views agree on the better
    label, or neither view supports the given label (`unsupported` in both).

    The second clause needs no confident learning: an item whose probability is spread over several
    other classes clears none of the per-class thresholds, so confident learning counts it nowhere and
    never flags it, even when neither view gives its label any support (with k-NN views: none of the k
    neighbours in either view carries the label).
    """
    agree = other_class((first,), y)[0] == other_class((second,), y)[0]
    neither = unsupported(first, y) & unsupported(second, y)
    flagged = confident_learning(first, y)[0] & confident_learning(second, y)[0]
    return (flagged & agree) | neither


def best_other(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per item: the probability of the most probable class other than its given one."""
    return other_class((probs,), y)[1]


def _rows(matrix: np.ndarray | VoteProbs, keep: np.ndarray) -> np.ndarray | VoteProbs:
    """matrix[keep], without the copy when `keep` is every row in order."""
    if isinstance(matrix, VoteProbs):
        return matrix if len(keep) == len(matrix) else matrix.take(keep)
    matrix = np.asarray(matrix)
    return matrix if len(keep) == len(matrix) else matrix[keep]


def label_check(
    frame: pd.DataFrame,
    probs: np.ndarray,
    classes: Sequence[str],
    source: str,
    labels: Sequence | None = None,
    confirm: np.ndarray | None = None,
    evidence: np.ndarray | None = None,
) -> CheckResult:
    """Confident-learning label issues; `labels` (default frame.label) are the given labels per row.

    `confirm` is a second, independent view's probabilities over the same classes (e.g. k-NN on the
    captions when `probs` come from the images): a record is flagged by `both_views_flag` (confident
    learning flags it in both views and they agree on the better label, or both views give the given label
    less than `UNSUPPORTED` probability while more than `MIN_PEERS` records carry it; without that guard
    every label of one or two records was an issue on the emoji data's name-level labels); the suggestion
    is the argmax of their mean. On the emoji data with 5 % of labels flipped and 5 % of captions swapped
    (subcategory labels, the k-NN views of `bench/audit_recall.py`'s seed-1 faults, a one-off analysis
    script, not kept) precision/recall: images alone 0.30/0.76; both views' confident learning 0.75/0.72,
    and agreeing (or both unsupported) 0.82/0.72; or both unsupported without confident learning 0.83/0.96
    (186 of the 217 flips it had missed were not flagged by the image view's confident learning, though
    their median image probability of the given label was 0.001).

    `evidence` (same rows and classes) is look-alike evidence: the views' k-NN probabilities with the
    smoothing pseudo-vote fixed at `LOOKALIKE_PRIOR` (as much as one neighbour at cosine 0.9), averaged
    over the views. With it, a record is reported only where that evidence gives one other label at least
    `ALTERNATIVE`: a wrong label is one that close look-alikes contradict by agreeing on another. Without
    look-alikes (one record per concept, a model that reads the data poorly) the nearest neighbours are
    far, carry unrelated labels, and give the given label no support without proving anything: on
    `bench/audit_clean.py` 80 such findings in 4,814 clean records, 2 with the gate. On
    `bench/audit_recall.py` flipped labels go from 0.851 / 0.960 (precision / recall) to 0.884 / 0.834 on
    seed 0 and 0.845 / 0.956 to 0.873 / 0.842 on seed 1 (offline on the label views, one-off script).
    """
    given = pd.Series(list(frame["label"] if labels is None else labels), index=frame.index, dtype=object)
    index = {str(c): i for i, c in enumerate(classes)}
    y = np.array([index.get(str(v), -1) if v is not None and v == v else -1 for v in given])
    keep = np.flatnonzero(y >= 0)
    result = CheckResult(check="labels", details={"source": source, "n_classes": len(index)})
    if len(keep) == 0:
        result.skipped = "no record has a label among the probability columns"
        return result
    probs = probs if isinstance(probs, VoteProbs) else np.asarray(probs)
    mask, suggested, self_conf = confident_learning(_rows(probs, keep), y[keep])
    if confirm is not None:
        confirm = confirm if isinstance(confirm, VoteProbs) else np.asarray(confirm)
        if confirm.shape != probs.shape:
            raise ValueError(f"confirm has shape {confirm.shape}, probs {probs.shape}: use the same rows")
        first, second = _rows(probs, keep), _rows(confirm, keep)
        mask = both_views_flag(first, second, y[keep])
        suggested = other_class((first, second), y[keep])[0]  # another class, by the views' mean
    if evidence is not None:
        evidence = evidence if isinstance(evidence, VoteProbs) else np.asarray(evidence)
        if evidence.shape != probs.shape:
            raise ValueError(f"evidence has shape {evidence.shape}, probs {probs.shape}: use the same rows")
        mask &= best_other(_rows(evidence, keep), y[keep]) >= ALTERNATIVE
    ids = frame["id"].astype(str).to_numpy()
    for local in sorted(np.flatnonzero(mask), key=lambda i: self_conf[i]):
        row, sugg = keep[local], str(classes[suggested[local]])
        cell = (np.array([row]), suggested[local : local + 1])
        p_sugg = float(cells(probs, *cell)[0])
        if confirm is not None:  # the views' mean
            p_sugg = float((cells(probs, *cell)[0] + cells(confirm, *cell)[0]) / 2)
        result.findings.append(
            Finding(
                record_id=ids[row],
                check="labels",
                kind="label_issue",
                severity="warning",
                message=f"labelled {given.iloc[row]!r}; {source} suggests {sugg!r} (p={p_sugg:.2f})",
                evidence={
                    "given_label": str(given.iloc[row]),
                    "suggested_label": sugg,
                    "self_confidence": float(self_conf[local]),
                    "suggested_probability": p_sugg,
                    "source": source,
                },
            )
        )
    result.metrics = {"label_issues": int(mask.sum()), "label_issue_rate": float(mask.mean())}
    result.details |= {"n_checked": len(keep), "method": "confident learning, prune_by_noise_rate"}
    if len(keep) < len(frame):
        result.notes.append(f"{len(frame) - len(keep)} records without a known label were not checked")
    return result


def _alignment_z(sim: np.ndarray, groups: np.ndarray, min_per_label: int) -> tuple[np.ndarray, int]:
    """Robust z of each similarity: within its label when the label has enough items, else data-set wide."""
    n_groups = 0
    with np.errstate(invalid="ignore"):  # robust_z warns (harmlessly) when MAD is 0
        z = robust_z(sim)
        for value in pd.unique(groups):
            members = np.flatnonzero(groups == value)
            if value is not None and value == value and len(members) >= min_per_label:
                z[members] = robust_z(sim[members])
                n_groups += 1
    return z, n_groups


def _misaligned(
    row: int, best: int, sim: float, z: float, ids: np.ndarray, texts: np.ndarray, given: np.ndarray, img, txt
) -> Finding:
    """A misaligned_caption finding for `row`, suggesting the best-matching other caption `best`."""
    return Finding(
        record_id=ids[row],
        check="alignment",
        kind="misaligned_caption",
        severity="warning",
        message=f"caption {texts[row]!r} fits its image poorly (cos {sim:.3f}, z {z:.1f}); "
        f"closest other caption is {texts[best]!r}",
        evidence={
            "similarity": sim,
            "z": z,
            "caption": texts[row],
            "suggested_caption": texts[best],
            "suggested_record": ids[best],
            "suggested_record_label": None if given[best] is None else str(given[best]),
            "suggested_similarity": float(img[row] @ txt[best]),
        },
    )


def _swapped(scored: np.ndarray, skip: set, img, txt, texts: np.ndarray, ids: np.ndarray) -> list[Finding]:
    """swapped_caption findings: mutual `swap_partners` whose caption also ranks poorly on its image
    (fits it worse than `CAPTION_RANK_SHARE` of the distinct captions); rows in `skip` are already flagged."""
    from vlmops.audit.caption_swaps import CAPTION_RANK_SHARE, caption_rank_share, swap_partners

    image, text, captions = img[scored], txt[scored], list(texts[scored])
    partner = swap_partners(image, text, captions)
    share = caption_rank_share(image, text, captions)
    out = []
    for local in np.flatnonzero((partner >= 0) & (share > CAPTION_RANK_SHARE)):
        row, other = scored[local], scored[partner[local]]
        if row in skip:
            continue
        message = (
            f"caption {texts[row]!r} fits the image of {ids[other]} better, whose caption {texts[other]!r} "
            "fits this image better: the captions look exchanged"
        )
        evidence = {"caption": texts[row], "partner": ids[other], "partner_caption": texts[other],
                    "similarity": float(img[row] @ txt[row]),
                    "swapped_similarity": float(img[row] @ txt[other]),
                    "caption_rank_share": float(share[local])}  # fmt: skip
        out.append(Finding(ids[row], "alignment", "swapped_caption", "warning", message, evidence))
    return out


def _best_other_caption(
    img: np.ndarray, txt: np.ndarray, texts: np.ndarray, scored: np.ndarray, local: np.ndarray
) -> np.ndarray:
    """Per record `scored[local]`: the scored record whose caption (not a copy of its own) fits its image
    best (one `neighbours.top_k` search, exact below its threshold)."""
    from vlmops.audit.neighbours import top_k

    if not len(local):
        return np.empty(0, dtype=np.int64)
    code = np.unique(texts[scored].astype(str), return_inverse=True)[1]
    ids, sims = top_k(img[scored[local]], txt[scored], 1, exclude=(code[local], code))
    return scored[np.where(np.isfinite(sims[:, 0]), ids[:, 0], 0)]


def alignment_check(
    frame: pd.DataFrame,
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    z_threshold: float = -3.5,
    min_per_label: int = 20,
    labels: Sequence | None = None,
) -> CheckResult:
    """Captions whose cosine to their image is a low robust-z outlier (text_emb: first text per record).

    z is the modified z-score of the Fisher-transformed cosine (arctanh, which removes the skew of
    similarities near 1), within the record's label when it has >= min_per_label scored records, else
    against the whole data set. The suggestion is the other caption (not a copy of the record's own)
    that best matches the image.
    """
    img, txt = _normalise(image_emb), _normalise(text_emb)
    if img.shape != txt.shape or len(img) != len(frame):
        raise DataError(f"need one image and one text embedding per record; got {img.shape}, {txt.shape}")
    texts = np.array(
        [next(iter(t)) if t is not None and len(t) else "" for t in frame["texts"]], dtype=object
    )
    scored = np.flatnonzero((texts != "") & (np.linalg.norm(txt, axis=1) > 0))
    given = np.asarray(list(frame["label"] if labels is None else labels), dtype=object)
    details = {"z_threshold": z_threshold, "min_per_label": min_per_label}
    result = CheckResult(check="alignment", details=details)
    if len(scored) < 3:
        result.skipped = f"only {len(scored)} records have a caption and an embedding; need 3"
        return result
    sim = np.einsum("nd,nd->n", img[scored], txt[scored]).astype(np.float64)
    fisher = np.arctanh(np.clip(sim, -0.999999, 0.999999))  # cosines are skewed near 1; this is not
    z, n_groups = _alignment_z(fisher, given[scored], min_per_label)
    median, mad = float(np.median(fisher)), float(np.median(np.abs(fisher - np.median(fisher))))
    result.details |= {
        "labels_scored_separately": n_groups,
        "dataset_median_similarity": float(np.tanh(median)),
        "dataset_similarity_cutoff": float(np.tanh(median + z_threshold * mad / MAD_TO_SIGMA)),
    }
    ids = frame["id"].astype(str).to_numpy()
    flagged = np.flatnonzero(z < z_threshold)
    order = flagged[np.argsort(z[flagged], kind="stable")]
    for local, best in zip(order, _best_other_caption(img, txt, texts, scored, order), strict=True):
        row = scored[local]
        result.findings.append(
            _misaligned(row, best, float(sim[local]), float(z[local]), ids, texts, given, img, txt)
        )
    swapped = _swapped(scored, set(scored[flagged]), img, txt, texts, ids)
    result.findings.extend(swapped)
    n_flagged = len(flagged) + len(swapped)
    result.metrics = {"misaligned": n_flagged, "misaligned_rate": n_flagged / len(scored)}
    result.metrics["swapped_captions"] = len(swapped)
    if len(scored) < len(frame):
        result.notes.append(f"{len(frame) - len(scored)} records without a caption were not scored")
    return result
