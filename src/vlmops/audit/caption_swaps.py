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
Cost: one pass over all caption-image similarities, in blocks (about 5 s for 15k records on 2 cores).
"""

from __future__ import annotations

import numpy as np

from vlmops.models.base import l2_normalise

CANDIDATES = 10  # best-fitting images per caption searched for the caption's owner
BLOCK = 1024


def swap_partners(
    image_emb: np.ndarray, text_emb: np.ndarray, texts: list[str], candidates: int = CANDIDATES
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
    for start in range(0, n, BLOCK):
        rows = np.arange(start, min(start + BLOCK, n))
        fits = text[rows] @ image.T  # caption i on every image
        fits[code[rows, None] == code[None, :]] = -np.inf  # itself and its copies
        cand = np.argpartition(-fits, k - 1, axis=1)[:, :k]
        theirs_here = np.einsum("rd,rkd->rk", image[rows], text[cand])  # candidate's caption on image i
        mine_there = np.take_along_axis(fits, cand, axis=1)  # caption i on the candidate's image
        both = (theirs_here > own[rows, None]) & (mine_there > own[cand]) & np.isfinite(mine_there)
        total = np.where(both, theirs_here + mine_there - own[rows, None] - own[cand], -np.inf)
        pick = total.argmax(axis=1)
        found = np.isfinite(total[np.arange(len(rows)), pick])
        best[rows[found]] = cand[found, pick[found]]
    mutual = best >= 0
    mutual[mutual] = best[best[mutual]] == np.flatnonzero(mutual)
    mutual &= ~_peers_vouch(image, code, best)
    return np.where(mutual, best, -1)


def _peers_vouch(image: np.ndarray, code: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """Records whose caption's other carriers look more like this record's image than like its partner's:
    the caption is where it belongs (two look-alikes the model confuses, not an exchange)."""
    sums = np.zeros((code.max() + 1, image.shape[1]), dtype=np.float64)
    np.add.at(sums, code, image)
    count = np.bincount(code)
    rows = np.flatnonzero((partner >= 0) & (count[code] > 1))
    peers = sums[code[rows]] - image[rows]  # the other carriers' summed images (the mean's direction)
    out = np.zeros(len(image), dtype=bool)
    here = np.einsum("rd,rd->r", peers, image[rows])
    there = np.einsum("rd,rd->r", peers, image[partner[rows]])
    out[rows] = here > there
    return out
