"""Captions exchanged between two records: each fits the other's image better than its own.

For every caption, the `CANDIDATES` images that fit it best (records with the very same caption text
excluded: they are its copies, not its owner) are candidate owners. Record i and candidate j form a
swap when giving i's caption to j and j's caption to i raises both similarities; i's partner is the
candidate whose exchange gains most. A pair is reported when the partners choose each other, so a
caption that merely resembles a neighbour's (a tone or gender variant) is not enough: the neighbour's
caption must fit this image better as well. Where other records carry the same caption (the same emoji
from other vendors), they vouch for it when their images look more like this record's image than like
the partner's: then the model confuses two look-alikes and nothing was exchanged.

No labels are needed, so it finds exchanges the label-based contradictions cannot see: two captions of
the same label. On `bench/audit_recall.py` (5 % of captions swapped in pairs; one-off analysis of the
seed-0 and seed-1 label views before the check existed) the mutual rule alone flagged 220 / 246 records
of which 158 / 182 were swapped; gated as below it added 16 / 7 swapped records to the other rules'
findings for 5 / 7 false ones. 30 or 100 candidates found a few more swaps and many more false pairs.
Of its 171 / 195 findings with the rank gate (9 / 12 false), the vouching peers removed 6 / 8 false
and 1 / 1 true ones.
Cost: one pass over all caption-image similarities, in blocks (about 5 s for 15k records on 2 cores);
above the `neighbours` threshold the candidates come from an IVF index instead (about linear).

A mutual pair is reported only when a test rejects "no exchange" at a controlled false-discovery rate
(`_exchange_rejected`): on small data or with a model that reads the data poorly (line art, generated
shapes, captions that are class names), pairs that prefer each other's captions arise by chance, and
`bench/audit_clean.py` found 94 such "exchanges" in 4,814 clean records before the test, none after.
"""

from __future__ import annotations

import numpy as np

from vlmops.models.base import l2_normalise

CAPTION_RANK_SHARE = 0.02  # a contradicting caption must fit its image worse than 2 % of all captions

CANDIDATES = 10  # best-fitting images per caption searched for the caption's owner
BLOCK = 1024
RANK_POOL = 3000  # distinct captions a caption is ranked against (a seeded sample beyond)
FDR = 0.05


def swap_partners(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    texts: list[str],
    candidates: int = CANDIDATES,
    fdr: float = FDR,
) -> np.ndarray:
    """Per record, the record its caption was likely exchanged with, or -1.

    `image_emb` and `text_emb` hold one row per record (the image and its caption); `texts` the caption
    strings, so that records with identical captions are never each other's candidates.
    """
    image, text = l2_normalise(image_emb), l2_normalise(text_emb)
    n = len(image)
    if text.shape != image.shape or len(texts) != n:
        shapes = f"{image.shape}, {text.shape}, {len(texts)} texts"
        raise ValueError(f"need one image, caption embedding and text per record; got {shapes}")
    code = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)[1]
    own = np.einsum("nd,nd->n", image, text)
    best = np.full(n, -1)
    k = min(candidates, n - 1)
    if k < 1:
        return best
    from vlmops.audit.neighbours import top_k

    # the k images caption i fits best, itself and its copies (same caption) excluded
    candidates, fit = top_k(text, image, k, exclude=(code, code), block=BLOCK)
    for start in range(0, n, BLOCK):
        rows = np.arange(start, min(start + BLOCK, n))
        cand = candidates[rows]
        theirs_here = np.einsum("rd,rkd->rk", image[rows], text[cand])  # candidate's caption on image i
        mine_there = fit[rows]  # caption i on the candidate's image
        both = (theirs_here > own[rows, None]) & (mine_there > own[cand]) & np.isfinite(mine_there)
        total = np.where(both, theirs_here + mine_there - own[rows, None] - own[cand], -np.inf)
        pick = total.argmax(axis=1)
        found = np.isfinite(total[np.arange(len(rows)), pick])
        best[rows[found]] = cand[found, pick[found]]
    mutual = best >= 0
    mutual[mutual] = best[best[mutual]] == np.flatnonzero(mutual)
    mutual &= _exchange_rejected(image, text, code, np.where(mutual, best, -1), n // 2, fdr)
    mutual &= ~_peers_vouch(image, code, best)
    return np.where(mutual, best, -1)


def _exchange_rejected(
    image: np.ndarray, text: np.ndarray, code: np.ndarray, partner: np.ndarray, tests: int, fdr: float
) -> np.ndarray:
    """Pairs whose test rejects "no exchange" (Benjamini-Hochberg at `fdr` over `tests` hypotheses, one per
    possible pair: a record has one partner at most).

    Without an exchange the partner's caption is just another caption for this image: its rank among the
    data set's distinct captions (`RANK_POOL` at most) is about uniform, p = (1 + captions that fit the
    image better) / (1 + captions compared); and this image is just another image for that caption: p =
    (1 + images it fits better) / images; and the record's own caption ranks among the distinct captions
    no worse than the data set's own captions usually do: p = share of records whose own caption ranks
    as low or lower. A side's p-value is the largest of the three (a caption that fits every image well,
    or a model that often ranks the right caption low on this data, is no evidence), and the two sides'
    are combined by Fisher's method. On a small data set or with a model that aligns the data poorly, no
    pair reaches significance.
    """
    from scipy.stats import chi2

    rows = np.flatnonzero(partner >= 0)
    out = np.zeros(len(image), dtype=bool)
    if not len(rows):
        return out
    _, first = np.unique(code, return_index=True)
    if len(first) > RANK_POOL:
        first = np.random.default_rng(0).choice(first, RANK_POOL, replace=False)
    sims = image[rows] @ text[first].T  # every pool caption on each flagged image
    theirs = np.einsum("rd,rd->r", image[rows], text[partner[rows]])
    other = code[first][None, :] != code[partner[rows]][:, None]  # the partner's caption is not compared
    better = ((sims > theirs[:, None]) & other).sum(axis=1)
    p_caption = (1 + better) / (1 + other.sum(axis=1))
    fitter = np.empty(len(rows), dtype=np.int64)  # images the partner's caption fits better than this one
    for start in range(0, len(rows), BLOCK):  # linear per flagged record, in blocks to bound memory
        part = slice(start, start + BLOCK)
        fitter[part] = (text[partner[rows[part]]] @ image.T > theirs[part, None]).sum(axis=1)
    p = np.maximum(p_caption, (1 + fitter) / len(image))
    own = _own_rank_share(image, text, first)
    p = np.maximum(p, (own[None, :] >= own[rows, None]).sum(axis=1) / len(image))
    where = np.full(len(image), -1)
    where[rows] = np.arange(len(rows))
    mine = rows < partner[rows]  # each pair once
    combined = chi2.sf(-2 * (np.log(p[mine]) + np.log(p[where[partner[rows[mine]]]])), 4)
    order = np.argsort(combined)
    passed = combined[order] <= fdr * np.arange(1, len(order) + 1) / max(tests, len(order))
    cut = np.flatnonzero(passed).max() + 1 if passed.any() else 0
    pairs = rows[mine][order[:cut]]
    out[pairs] = out[partner[pairs]] = True
    return out


def _own_rank_share(image: np.ndarray, text: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Per record: the share of the `pool` captions that fit its image better than its own caption."""
    own = np.einsum("nd,nd->n", image, text)
    share = np.empty(len(image))
    for start in range(0, len(image), BLOCK):
        sims = image[start : start + BLOCK] @ text[pool].T
        share[start : start + BLOCK] = (sims > own[start : start + BLOCK, None]).mean(axis=1)
    return share


def _peers_vouch(image: np.ndarray, code: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """Records whose caption's other carriers vouch for it: the image looks more like them than like the
    other carriers of the partner's caption (or, where the partner's caption has no other carriers, they
    look more like this image than like the partner's). Then the caption is where it belongs (two
    look-alikes the model confuses, not an exchange)."""
    sums = np.zeros((code.max() + 1, image.shape[1]), dtype=np.float64)
    np.add.at(sums, code, image)
    count = np.bincount(code)
    rows = np.flatnonzero((partner >= 0) & (count[code] > 1))
    other = partner[rows]
    peers = (sums[code[rows]] - image[rows]) / (count[code[rows]] - 1)[:, None]  # mean of the other carriers
    here = np.einsum("rd,rd->r", peers, image[rows])
    theirs = count[code[other]] > 1  # the partner's caption has carriers besides the partner
    rivals = (sums[code[other]] - image[other]) / np.maximum(count[code[other]] - 1, 1)[:, None]
    there = np.where(
        theirs, np.einsum("rd,rd->r", rivals, image[rows]), np.einsum("rd,rd->r", peers, image[other])
    )
    out = np.zeros(len(image), dtype=bool)
    out[rows] = here > there
    return out


def caption_rank_share(image_emb: np.ndarray, text_emb: np.ndarray, texts: list[str], seed: int = 0):
    """Per record: the share of the data set's distinct captions that fit its image better than its own.

    A rank, unlike a raw cosine, is comparable across images: some images are close to every caption.
    Measured against at most `RANK_POOL` distinct captions (a seeded sample beyond that).
    """
    _, first = np.unique(np.asarray(texts, dtype=object).astype(str), return_index=True)
    if len(first) > RANK_POOL:
        first = np.random.default_rng(seed).choice(first, RANK_POOL, replace=False)
    image, text = l2_normalise(image_emb), l2_normalise(text_emb)
    own = np.einsum("nd,nd->n", image, text)
    share = np.empty(len(image))
    for start in range(0, len(image), 2048):
        sims = image[start : start + 2048] @ text[first].T
        share[start : start + 2048] = (sims > own[start : start + 2048, None]).mean(1)
    return share
