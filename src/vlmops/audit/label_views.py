"""Two views of every labelled record, for the labels and alignment checks.

The image view is an out-of-sample k-NN (or logistic) label model on image embeddings; the caption view
the same model on the embeddings of each record's first text. Confident learning runs on each view:

- flagged by both views: the label is likely wrong (a `label_issue`);
- flagged by the caption view, the image backs the given label over the label the caption reads as
  (the image k-NN view and the model's zero-shot view, averaged), the records carrying the very same
  caption (if any) are not mostly of this label, and the caption is not among the
  `CAPTION_RANK_SHARE` of the data set's distinct captions that fit the image best: the caption likely
  belongs to another record (`caption_contradicts_label`, reported by the alignment check next to the
  image-caption similarity outliers).

The image arbitrates between "the label is wrong" and "the caption is wrong": when the caption reads as
label B but the record says A, a wrong label leaves the image looking like B, a wrong caption leaves it
looking like A. An ablation on the label views of `bench/audit_recall.py`'s faults with seed 1 (a
one-off analysis script, not kept; the benchmark reports seed 0; 5 % flipped labels, 5 % swapped
captions, subcategory labels, `builtin:emoji-lit`), contradictions only:

- before: "caption view flags, not a label issue by both views, similarity robust z < -0.5":
  precision 0.81 / recall 0.89; 65 of its 155 false findings were flipped labels that the image view
  had not flagged as confidently as the caption view;
- image k-NN arbiter, same z rule: 0.89 / 0.87; k-NN and zero-shot averaged: 0.86 / 0.91 (zero-shot
  alone is a poor arbiter, 0.81 / 0.76: its top-1 on subcategories is 0.13 against k-NN's 0.77);
- the rank rule instead of z (a rank is comparable across images, a raw cosine is not): 0.90 / 0.89
  at 5 %, 0.89 / 0.91 at 2 %;
- and exact-caption twins that back the label clear the record (the out-of-fold k-NN can miss the
  twins): 0.94 / 0.89 at 5 %, 0.93 / 0.91 at 2 %. The whole alignment check (with the similarity
  outliers): see `python bench/audit_recall.py --seed 1` in bench/RESULTS.md.

Misses: swaps between records of one label (the caption view cannot see them, about 4 %; the
label-free `caption_swaps` check finds those whose partners each fit the other's image better), swaps
whose image the views read as the partner's label, and swapped captions that still rank in the top 2 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlmops.audit.caption_swaps import CAPTION_RANK_SHARE, caption_rank_share
from vlmops.audit.findings import CheckResult, Finding
from vlmops.audit.vote_probs import VoteProbs, cells, row_argmax

Probs = np.ndarray | VoteProbs


@dataclass(frozen=True)
class LabelViews:
    """Out-of-sample class probabilities of the labelled, readable records from images and captions.

    With the k-NN method every view is a `VoteProbs` (the voted classes and the floor per row: memory
    O(records x k), not O(records x classes)) and the zero-shot view a `labels.ZeroShot` computed on
    demand; with `method="logistic"` the image and caption views are dense (n, classes) matrices. Dense
    matrices are accepted everywhere (tests, small data)."""

    rows: np.ndarray
    classes: list[str]
    y: np.ndarray
    image_probs: Probs
    text_probs: Probs | None
    text_emb: np.ndarray | None
    method: str
    zero_shot_probs: object | None = None  # labels.ZeroShot or dense: the model's reading among the labels
    lookalike: Probs | None = None  # k-NN evidence of close look-alikes, views averaged
    caption_lookalike: Probs | None = None  # the same from the captions alone


def build_views(inputs, method: str) -> LabelViews | str:
    """The two views for `inputs` (an AuditInputs), or the reason they cannot be built."""
    from vlmops.audit.labels import LOOKALIKE_PRIOR, ZeroShot, out_of_sample_probs
    from vlmops.evaluate.task import prompt_name
    from vlmops.store.embed import embed_texts_cached

    frame = inputs.frame
    labelled = frame["label"].notna().to_numpy() & inputs.readable
    if labelled.sum() < 10:
        return "fewer than 10 labelled records with a readable image"
    rows = np.flatnonzero(labelled)
    labels = [str(x) for x in frame["label"].to_numpy()[rows]]
    sparse = method == "knn"  # VoteProbs: O(records x k) memory; a logistic view is dense
    image_emb = inputs.image_emb()[rows]
    image_probs, classes = out_of_sample_probs(image_emb, labels, method=method, sparse=sparse)
    lookalike = caption_lookalike = None
    if method == "knn":
        lookalike = out_of_sample_probs(image_emb, labels, prior=LOOKALIKE_PRIOR, sparse=True)[0]
    del image_emb
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[x] for x in labels])
    first = inputs.first_texts()
    texts = [first[i] for i in rows]
    text_probs = text_emb = None
    if sum(t is not None for t in texts) >= 0.9 * len(texts):
        text_emb, _ = embed_texts_cached(
            inputs.model, [t or "" for t in texts], inputs.cache, progress=inputs.progress
        )
        text_probs, text_classes = out_of_sample_probs(text_emb, labels, method=method, sparse=sparse)
        assert list(text_classes) == list(classes), "both views see the same labels"
        if lookalike is not None:
            caption_lookalike = out_of_sample_probs(text_emb, labels, prior=LOOKALIKE_PRIOR, sparse=True)[0]
            lookalike = lookalike.mean(caption_lookalike)
    prompts = [inputs.prompt_template.format(prompt_name(str(c).split("/")[-1])) for c in classes]
    class_emb, _ = embed_texts_cached(inputs.model, prompts, inputs.cache, progress=False)
    zero_shot = ZeroShot(inputs.image_emb(), rows, class_emb, float(inputs.model.logit_scale))
    classes = [str(c) for c in classes]
    return LabelViews(
        rows, classes, y, image_probs, text_probs, text_emb, method, zero_shot, lookalike, caption_lookalike
    )


def peers_back_label(texts: list[str], y: np.ndarray, other: bool = False) -> np.ndarray:
    """Per record: other records carry the very same caption, and most of them this record's label (with
    `other`: most of them one other label).

    Such a caption agrees with the label whatever the caption view's neighbours say (out-of-fold k-NN
    can miss the exact twins); a swapped caption's twins carry its true owner's label instead.
    """
    out = np.zeros(len(y), dtype=bool)
    groups = pd.Series(range(len(texts))).groupby(pd.Series(texts, dtype=object).astype(str))
    for members in groups.indices.values():
        if len(members) < 2:
            continue
        labels = y[members]
        for i, label in zip(members, labels, strict=True):
            others = np.bincount(labels, minlength=int(labels.max()) + 1)
            others[label] -= 1  # not itself
            best = others.argmax()
            out[i] = others[best] > 0 and (best != label if other else best == label)
    return out


def _zero_shot_cells(zero_shot, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """The zero-shot view (a dense matrix or a `labels.ZeroShot`) at (row r, c[r]) for each c of `cols`."""
    if isinstance(zero_shot, np.ndarray):
        return tuple(zero_shot[np.arange(len(zero_shot)), c] for c in cols)
    return zero_shot.cells(*cols)


def caption_contradictions(frame, views: LabelViews, image_emb: np.ndarray | None = None) -> list[Finding]:
    """Records whose caption view doubts the label while the image backs the label over the caption's
    reading (image view and zero-shot view averaged), and (when `image_emb` of the view rows is given)
    whose caption fits the image worse than `CAPTION_RANK_SHARE` of the data set's captions.

    With look-alike evidence (`LabelViews.caption_lookalike`), the caption must also be shown to belong to
    another label: its look-alike captions give one other label at least `CAPTION_ALTERNATIVE`, or the
    records carrying the very same caption mostly carry one other label. A caption with neither (one
    record per concept, where the nearest captions are unrelated names) proves nothing: on
    `bench/audit_clean.py` the contradictions go from 51 to 1 in 4,814 clean records (with the
    similarity outliers set aside as in `add_contradictions`; one-off script on the label views), while
    `bench/audit_recall.py`'s swapped-caption recall stayed 0.902 / 0.913 (seeds 0 / 1; 0.902 / 0.915
    before) and precision rose 0.947 / 0.945 -> 0.959 / 0.951.
    """
    from vlmops.audit.labels import CAPTION_ALTERNATIVE, best_other, confident_learning, unsupported
    from vlmops.audit.vote_probs import other_class

    if views.text_probs is None:
        return []
    rows = np.arange(len(views.y))
    text_flags = confident_learning(views.text_probs, views.y)[0]
    text_flags |= unsupported(views.text_probs, views.y)  # spread-out doubt that CL counts nowhere
    reads_as = other_class((views.text_probs,), views.y)[0]  # what the caption reads as, not the label
    # the image k-NN view and the zero-shot view averaged, at the label and at the caption's reading
    image_label, image_reads = (
        cells(views.image_probs, rows, views.y),
        cells(views.image_probs, rows, reads_as),
    )
    if views.zero_shot_probs is not None:
        zero_label, zero_reads = _zero_shot_cells(views.zero_shot_probs, views.y, reads_as)
        image_label, image_reads = (image_label + zero_label) / 2, (image_reads + zero_reads) / 2
    image_backs_label = image_label > image_reads
    flags = text_flags & image_backs_label  # else the image sides with the caption: a label issue
    texts = [frame["texts"].iloc[i][0] for i in views.rows]
    flags &= ~peers_back_label(texts, views.y)
    if image_emb is not None and views.text_emb is not None:
        flags &= caption_rank_share(image_emb, views.text_emb, texts) > CAPTION_RANK_SHARE
    if views.caption_lookalike is not None:  # evidence that the caption belongs to another label
        elsewhere = best_other(views.caption_lookalike, views.y) >= CAPTION_ALTERNATIVE
        flags &= elsewhere | peers_back_label(texts, views.y, other=True)
    ids = frame["id"].astype(str).to_numpy()[views.rows]
    out = []
    for local in np.flatnonzero(flags):
        given, said = str(views.classes[views.y[local]]), str(views.classes[reads_as[local]])
        out.append(
            Finding(
                ids[local], "alignment", "caption_contradicts_label", "warning",
                f"the caption {texts[local]!r} reads as {said!r}; the image agrees with the label {given!r}",
                {"caption": texts[local], "label": given, "caption_suggests": said,
                 "caption_label_probability": float(cells(views.text_probs, [local], views.y[[local]])[0]),
                 "image_label_probability": float(image_label[local]),
                 "image_suggested_probability": float(image_reads[local])},
            )
        )  # fmt: skip
    return out


def add_contradictions(
    result: CheckResult, frame, views: LabelViews | str, image_emb: np.ndarray | None = None
) -> CheckResult:
    """Append caption contradictions to an alignment result and recount its metrics.

    With a caption view, a similarity outlier whose caption reads as its own label is set aside: caption
    and label agree, so the model (not the data) is what fails on that image, e.g. flags it cannot tell
    apart. So is one whose caption's look-alikes (the caption view with the `LOOKALIKE_PRIOR`) give no
    other label at least `CAPTION_ALTERNATIVE`: nothing shows that the caption belongs to another record,
    only that the model reads the image poorly (one record per concept, line art). They are counted per
    label in ``details["model_weak_labels"]`` instead of being findings; a set-aside record can still be
    a contradiction (`caption_contradictions`). On `bench/audit_clean.py` the similarity outliers go
    from 55 to 1 in 4,814 clean records; on `bench/audit_recall.py` the swapped captions no longer
    reported as outliers are reported as contradictions (seed 0's recall is unchanged).
    """
    from vlmops.audit.labels import CAPTION_ALTERNATIVE, best_other

    if isinstance(views, str):
        result.notes.append(f"caption-vs-label contradictions not checked: {views}")
        return result
    if views.text_probs is not None:
        local = dict(zip(frame["id"].astype(str).to_numpy()[views.rows], range(len(views.rows)), strict=True))
        reads = row_argmax(views.text_probs)
        evidence = views.caption_lookalike
        elsewhere = None if evidence is None else best_other(evidence, views.y) >= CAPTION_ALTERNATIVE

        def consistent(f) -> bool:
            i = local.get(f.record_id)
            if f.kind != "misaligned_caption" or i is None:
                return False
            return reads[i] == views.y[i] or (elsewhere is not None and not elsewhere[i])

        weak = [f for f in result.findings if consistent(f)]
        if weak:
            result.findings = [f for f in result.findings if not consistent(f)]
            labels = pd.Series([views.classes[views.y[local[f.record_id]]] for f in weak]).value_counts()
            result.details["model_weak_labels"] = {str(k): int(v) for k, v in labels.head(20).items()}
            result.notes.append(
                f"{len(weak)} low-similarity captions read as their own label or as no other (caption view): "
                "set aside as images the model aligns poorly, not data errors; see details.model_weak_labels"
            )
    reported = {f.record_id for f in result.findings}
    extra = [f for f in caption_contradictions(frame, views, image_emb) if f.record_id not in reported]
    result.findings.extend(extra)
    flagged = {f.record_id for f in result.findings}
    n = max(len(frame), 1)
    result.metrics = {**result.metrics, "misaligned": len(flagged), "misaligned_rate": len(flagged) / n,
                      "caption_contradictions": len(extra)}  # fmt: skip
    return result
