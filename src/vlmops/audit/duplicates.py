"""Exact and near duplicates, and train/eval leakage through them, in about linear time.

Exact duplicates share the sha256 of their bytes (the manifest's ``sha256`` column, else hashed). Near
duplicates come from two searches (`near_search`) whose pairs, verified by colour, are joined into
transitive clusters by connected components (union-find):

* pHash (64-bit DCT hash of luma) of two views of each image, the whole and its centre 90 % crop:
  whole-whole and crop-whole pairs within ``max_hamming`` bits, so a copy cropped and resized back is
  found through (crop of the original, whole of the copy).
* optional embeddings (unit rows): pairs with cosine >= ``min_cosine``.

Colour check: pHash sees brightness only, so an emoji's skin-tone and colour variants hash alike. Each
view keeps a colour signature, a 16x16 RGB thumbnail on white (a 64x64 bicubic canvas, 32x32 box,
Gaussian blur sigma 2 px, 2x2 means; 768 bytes). A pair is kept when the largest cell's mean
|difference| over RGB is at most ``max_colour`` (of 255), comparing the second image as is and rotated
by +-5 deg (cells that rotation brings in from outside the frame are skipped), and for embedding pairs
also either one's crop view.

Pixel check: the blurred 16x16 signature cannot see a detail a few pixels wide (a mouth: the imp and
the smiling face with horns; a circle and a square of one colour), so every pair that is not
byte-identical is finally compared at 64x64 (`vlmops.audit.pixel_check`, ``max_pixel``). On the clean
subsets of `bench/audit_clean.py` near-duplicate findings went from 25 to 2 (two OpenMoji faces, two
generated shapes) in 4,814 records; recall on `bench/audit_recall.py` stayed 0.980 / 0.987 (seeds 0 / 1).

Given `hashes` as plain uint64 pHashes there are no crop views or colours: pHash pairs and embedding
pairs are then kept unverified, as before this check existed (about half of emoji records cluster).

Defaults. ``max_colour = 11`` since the 64-px canvas: `bench/near_dup_colour.py` (150 copies among the
audit benchmark's faults) at 10 / 11 / 12 gives recall 0.973 / 0.980 / 0.980 (seed 0) and 0.987 at all
three (seed 1); precision with the source's pixel twins counted 0.959 / 0.959 / 0.954 and 0.941 / 0.937
/ 0.927; with the source's own clusters counted 1.0 and 0.995. Without the canvas, seed 0 had recall
0.913 / 0.940 at 11 / 12: six of nine misses were resized or cropped OpenMoji line art that the 44 -> 32
px box aliased. The earlier measurements, all before the canvas (500 random emoji, each copied resized
to 0.7x, as JPEG q40, centre 90 % crop resized back and rotated 5 deg on white, searched against all
15,170; recall: copies clustered with their source; precision: of the (copy, other record) pairs linked
directly, those whose other is the source): ``max_hamming = 7``, ``max_colour = 12``, ``min_cosine =
0.92`` (builtin:emoji-lit) recall 0.975 (resize 0.976, JPEG 1.0, crop 0.956, rotation 0.966), precision
0.83. The other records matched are the source's byte-identical twins (8 % of pairs), gender variants
openmoji draws alike (5 %), tone variants whose skin is a few pixels or an adjacent tone (2.5 %) and
look-alikes (squares, clocks): 0.91 counting twins as the source, 0.99 counting every record the source
itself clusters with. pHash alone (no model): recall 0.785 (0.936, 0.918, 0.924, rotation 0.362: pHash
moves 8+ bits), precision 0.84. Before (luma pHash only): 0.62 (crop 0.28, rotation 0.32) / 0.16; with
embeddings at 0.95 0.92 / 0.22.
Clean emoji: ``near_dup_rate`` was 55 % (clusters up to 225: whole tone and colour families), now 5.3 %
(5.9 % with the model; largest cluster 23): 2.1 % byte-identical copies, the rest mostly openmoji's
gender variants, tone variants with tiny faces or adjacent tones, squares and circles alike across
vendors; with the pixel check 4.2 % (5.4 % without it, both with the model and the 64-px canvas).
``max_colour`` 11 / 13: recall 0.958 / 0.984, precision 0.84 / 0.81, clean 5.4 / 6.5 %;
``min_cosine`` 0.95: recall 0.948 (rotation 0.88), 0.90: 0.983 / 0.82. ``max_hamming = 9`` lifts
pHash-only recall to 0.84 (rotation 0.53) for 2.4x the time. Tried and dropped (more tone variants
pass at equal recall): 8x8 box thumbnails, min/max envelopes, flat-region colours. Flat shapes (hearts)
can move 8-16 pHash bits under JPEG: only embeddings can find such copies.

Time (2 shared cores; the first n emoji, signatures given, emoji-lit embeddings), pHash search and
colour / LSH and colour / whole check: 2k 0.11 / 0.09 / 0.21 s, 4k 0.16 / 0.18 / 0.35 s, 8k 0.39 /
0.48 / 1.0 s, 15k 0.87 / 1.4 / 2.7 s (emoji-lit pairs grow from 3k to 11k between 8k and 15k records;
random embeddings: LSH 0.40 s, whole 1.7 s). Signatures cost 1.5 ms per 64-px image (pHash alone 0.35).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import sparse
from scipy.fft import dctn
from scipy.ndimage import gaussian_filter
from scipy.sparse.csgraph import connected_components

from vlmops.audit.findings import CheckResult, Finding
from vlmops.audit.near_search import (
    ANGLES,
    BUCKET_CAP,
    LSH_BITS,
    band_layout,
    colour_distances,
    cosine_pairs,
    hamming_pairs,
    lsh_tables_for,
    planar,
    popcount,
)
from vlmops.audit.pixel_check import MAX_PIXEL, pixel_distances
from vlmops.data.images import load_image
from vlmops.errors import DataError
from vlmops.hashing import sha256_file
from vlmops.models.preprocess import to_rgb

MAX_HAMMING = 7
MIN_COSINE = 0.92
MAX_COLOUR = 11.0
CROP = 0.9
CANVAS = 64  # colour signatures start from a square rendering of this size
MAX_LISTED = 20
TRAIN_SPLITS = frozenset({"train", "training"})
EVAL_SPLITS = frozenset({"val", "valid", "validation", "dev", "test", "testing"})
_RGB16 = ("u1", (16, 16, 3))
SIGNATURE = np.dtype(
    [("ok", "?"), ("phash", "<u8"), ("crop_phash", "<u8"), ("colour", *_RGB16), ("crop_colour", *_RGB16)]
)
_BIT_WEIGHTS = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash: 8x8 lowest DCT frequencies of a 32x32 gray copy vs their median (no DC)."""
    gray = to_rgb(image).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    block = dctn(np.asarray(gray, dtype=np.float64), type=2, norm="ortho")[:8, :8].ravel()
    bits = block > np.median(block[1:])
    bits[0] = False  # the DC term (mean brightness) carries no shape
    return int((bits.astype(np.uint64) * _BIT_WEIGHTS).sum())


def colour_signature(image: Image.Image) -> np.ndarray:
    """16x16x3 uint8: a 32x32 box thumbnail on white, Gaussian-blurred (sigma 2 px), in 2x2 means.

    The box thumbnail is taken from a `CANVAS` x `CANVAS` bicubic rendering, so images of every size
    pass the same exact 2x2 box: a box reduction by a non-integer factor (44 -> 32 px) aliases thin
    lines differently from 64 -> 32, and OpenMoji line art resized to 0.7x differed from its source by
    13-19 in the largest cell, against 2 when both are first brought to 64 px.
    """
    canvas = to_rgb(image).resize((CANVAS, CANVAS), Image.Resampling.BICUBIC)
    small = np.asarray(canvas.resize((32, 32), Image.Resampling.BOX), dtype=np.float32)
    blurred = gaussian_filter(small, sigma=(2, 2, 0), mode="nearest")
    return blurred.reshape(16, 2, 16, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def signature(image: Image.Image) -> np.ndarray:
    """One SIGNATURE record: pHash and colour signature of the image and of its centre `CROP` crop."""
    rgb = to_rgb(image)
    w, h = rgb.size
    dx, dy = round(w * (1 - CROP) / 2), round(h * (1 - CROP) / 2)
    crop = rgb.crop((dx, dy, w - dx, h - dy))
    out = np.zeros((), SIGNATURE)
    out["ok"], out["phash"], out["crop_phash"] = True, phash(rgb), phash(crop)
    out["colour"], out["crop_colour"] = colour_signature(rgb), colour_signature(crop)
    return out


def signatures(paths: Iterable[str | Path], progress: bool = True) -> np.ndarray:
    """SIGNATURE record per image path (all zero, ``ok`` False, where the file cannot be read)."""
    from vlmops.progress import progress_bar

    paths = [str(p) for p in paths]
    out = np.zeros(len(paths), SIGNATURE)
    with progress_bar(progress) as bar:
        task = bar.add_task("image signatures", total=len(paths))
        for i, path in enumerate(paths):
            with contextlib.suppress(DataError):
                out[i] = signature(load_image(path))
            bar.advance(task)
    return out


def phashes(paths: Iterable[str | Path], progress: bool = True) -> np.ndarray:
    """uint64 pHash per image path (0 where the file cannot be read), from full `signatures`."""
    return signatures(paths, progress)["phash"].astype(np.uint64)


def _hash_pairs(views: np.ndarray, colours, max_hamming: int, max_colour: float, cap: int):
    """Record pairs (i < j) whose whole-whole or crop-whole pHashes are close and whose colours agree.

    `views` is (n, 1) (whole pHashes only) or (n, 2) with crop pHashes; `colours` the planar signatures
    (2n, 3, 256) of the whole views, then of the crop views (None: pairs are not verified).
    """
    n = len(views)
    i, j, _ = hamming_pairs(views.T.ravel(), max_hamming, cap)
    keep = (i % n != j % n) & ((i < n) | (j < n))  # not a record with itself, not crop-crop
    i, j = i[keep], j[keep]
    if colours is not None:
        ok = colour_distances(colours, i, j, max_colour) <= max_colour
        i, j = i[ok], j[ok]
    return np.minimum(i % n, j % n), np.maximum(i % n, j % n)


def _cosine_ok(colours, ok, i: np.ndarray, j: np.ndarray, max_colour: float) -> np.ndarray:
    """Embedding pairs whose colours agree whole-whole or crop-whole (either way); unverifiable pass."""
    n, keep = len(ok), ~(ok[i] & ok[j])
    for a, b in ((i, j), (i + n, j), (i, j + n)):
        todo = np.flatnonzero(~keep)
        keep[todo] = colour_distances(colours, a[todo], b[todo], max_colour) <= max_colour
    return keep


def _pixel_verified(paths: list[str], sha: list, pairs: list, max_pixel: float) -> tuple[np.ndarray, ...]:
    """The distinct pairs of `pairs` that are byte-identical or pass the pixel check (or cannot be read:
    they pass unverified, as in the colour check)."""
    n = len(paths)
    code = np.unique(np.concatenate([a.astype(np.int64) * n + b for a, b in pairs] + [np.empty(0, np.int64)]))
    i, j = code // n, code % n
    same = np.array([sha[a] is not None and sha[a] == sha[b] for a, b in zip(i, j, strict=True)], dtype=bool)
    keep = same.copy()
    keep[~same] = ~(pixel_distances(paths, i[~same], j[~same]) > max_pixel)
    return i[keep], j[keep]


def _content_hashes(frame: pd.DataFrame) -> list[str | None]:
    """sha256 per record: the manifest's column where present, else the file's bytes (None if missing)."""
    given = frame["sha256"].tolist() if "sha256" in frame.columns else [None] * len(frame)
    out: list[str | None] = []
    for digest, path in zip(given, frame["image"], strict=True):
        try:
            out.append(digest.lower() if isinstance(digest, str) and digest else sha256_file(path))
        except OSError:
            out.append(None)
    return out


def _clusters(n: int, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Component label per record (union-find over all pairs); singletons get their own label."""
    i = np.concatenate([p[0] for p in pairs] + [np.empty(0, np.int64)])
    j = np.concatenate([p[1] for p in pairs] + [np.empty(0, np.int64)])
    graph = sparse.coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _cluster(number, members, ids, sha, hamming, cosine, has_cosine: bool, findings: list) -> dict:
    """One cluster's summary; appends a finding for each member after the first (in frame order)."""
    member_ids, head = [ids[m] for m in members], members[0]
    first_with_sha: dict[str, int] = {}
    for m in members:
        twin = first_with_sha.setdefault(sha[m], m) if sha[m] else m
        if m == head:
            continue
        evidence = {"cluster": number, "representative": ids[head], "cluster_size": len(members)}
        evidence["members"] = member_ids[:MAX_LISTED]
        if hamming[m] >= 0:
            evidence["hamming"] = int(hamming[m])
        if has_cosine:
            evidence["cosine"] = round(float(cosine[m]), 4)
        if twin != m:
            evidence["exact_twin"] = ids[twin]
            message = f"same bytes as {ids[twin]} (cluster {number}, {len(members)} records)"
            findings.append(Finding(ids[m], "duplicates", "exact_duplicate", "warning", message, evidence))
        else:
            message = f"near duplicate of {ids[head]} (cluster {number}, {len(members)} records)"
            findings.append(Finding(ids[m], "duplicates", "near_duplicate", "warning", message, evidence))
    rest = members[1:]
    known = hamming[rest][hamming[rest] >= 0]
    return {
        "cluster": number,
        "kind": "exact" if sha[head] and all(sha[m] == sha[head] for m in rest) else "near",
        "size": len(members),
        "representative": ids[head],
        "ids": member_ids,
        "max_hamming": int(known.max()) if known.size else None,
        "min_cosine": float(cosine[rest].min()) if has_cosine else None,
    }


def _inputs(frame: pd.DataFrame, hashes, progress: bool):
    """(pHash views (n, 1 or 2), planar colour signatures (2n, 3, 256) or None, readable mask)."""
    if hashes is None:
        hashes = signatures(frame["image"].astype(str).tolist(), progress)
    hashes = np.asarray(hashes)
    if hashes.dtype.names is None:  # plain uint64 pHashes: no crop views, no colours
        return hashes.astype(np.uint64)[:, None], None, np.ones(len(hashes), dtype=bool)
    views = np.stack([hashes["phash"], hashes["crop_phash"]], axis=1).astype(np.uint64)
    colours = planar(np.concatenate([hashes["colour"], hashes["crop_colour"]]))
    return views, colours, hashes["ok"].astype(bool)


def _view_hamming(views: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least pHash distance of records a and b over whole-whole and crop-whole (either way)."""
    d = popcount(views[a, 0] ^ views[b, 0])
    if views.shape[1] > 1:
        d = np.minimum.reduce([d, popcount(views[a, 1] ^ views[b, 0]), popcount(views[a, 0] ^ views[b, 1])])
    return d


def duplicates_check(
    frame: pd.DataFrame,
    embeddings: np.ndarray | None = None,
    hashes: np.ndarray | None = None,
    max_hamming: int = MAX_HAMMING,
    min_cosine: float = MIN_COSINE,
    progress: bool = True,
    *,
    max_colour: float = MAX_COLOUR,
    lsh_tables: int | None = None,
    lsh_bits: int = LSH_BITS,
    bucket_cap: int = BUCKET_CAP,
    seed: int = 0,
    max_pixel: float | None = MAX_PIXEL,
) -> CheckResult:
    """Exact (same bytes) and near (pHash within max_hamming, or cosine >= min_cosine) duplicate clusters.

    Near pairs must also pass the colour check (``max_colour``) and the pixel check (``max_pixel``,
    `vlmops.audit.pixel_check`; None skips it) where `hashes` are `signatures` (the default computes
    them). One finding per cluster member after the first in frame order: exact_duplicate when an
    earlier member has the same bytes, else near_duplicate. ``near_dup_rate`` counts both (an exact copy
    is a near duplicate at distance 0); ``exact_dup_rate`` only the former.
    `hashes` (`signatures`, or plain uint64 pHashes) and `embeddings` (unit rows) may be precomputed.
    """
    n, ids = len(frame), frame["id"].astype(str).tolist()
    if n == 0:
        return CheckResult("duplicates", skipped="no records")
    for name, given in (("hashes", hashes), ("embeddings", embeddings)):
        if given is not None and len(given) != n:
            raise ValueError(f"{name} has {len(given)} rows but the frame has {n}; compute them together")
    sha = _content_hashes(frame)
    views, colours, ok = _inputs(frame, hashes, progress)
    exact = pd.Series(range(n))[[s is not None for s in sha]].groupby(pd.Series(sha).dropna())
    pairs = [(exact.transform("min").to_numpy(), exact.obj.index.to_numpy())]
    rows = np.flatnonzero(ok)
    part = None if colours is None else np.concatenate([colours[rows], colours[n + rows]])
    hi, hj = _hash_pairs(views[rows], part, max_hamming, max_colour, bucket_cap)
    near = [(rows[hi], rows[hj])]
    if embeddings is not None:
        emb = np.asarray(embeddings, dtype=np.float32)
        ci, cj, _ = cosine_pairs(emb, min_cosine, lsh_tables, lsh_bits, seed, bucket_cap)
        keep = _cosine_ok(colours, ok, ci, cj, max_colour) if colours is not None else slice(None)
        near.append((ci[keep], cj[keep]))
    if colours is not None and max_pixel is not None:
        near = [_pixel_verified(frame["image"].astype(str).tolist(), sha, near, max_pixel)]
    pairs += near
    labels = _clusters(n, pairs)
    first = np.full(labels.max() + 1, n)
    np.minimum.at(first, labels, np.arange(n))
    rep, size = first[labels], np.bincount(labels)[labels]
    hamming = np.where(ok & ok[rep], _view_hamming(views, np.arange(n), rep), -1)
    cosine = np.einsum("ij,ij->i", emb, emb[rep]) if embeddings is not None else np.full(n, np.nan)
    order = np.argsort(rep, kind="stable")  # clusters in frame order of their first member
    order = order[size[order] > 1]
    findings: list[Finding] = []
    groups = np.split(order, np.flatnonzero(np.diff(rep[order])) + 1) if order.size else []
    has_cosine = embeddings is not None
    clusters = [_cluster(k, g, ids, sha, hamming, cosine, has_cosine, findings) for k, g in enumerate(groups)]
    n_exact = sum(f.kind == "exact_duplicate" for f in findings)
    metrics: dict[str, float | int | None] = {
        "exact_dup_rate": n_exact / n,
        "near_dup_rate": len(findings) / n,
    }
    metrics |= {"n_clusters": len(clusters), "exact_duplicates": n_exact}
    metrics["near_duplicates"] = len(findings) - n_exact
    layout = band_layout(len(rows) * views.shape[1], max_hamming)
    params = dict(zip(("bands", "band_probe_radius"), layout, strict=True))
    params |= {"max_hamming": max_hamming, "bucket_cap": bucket_cap, "colour_check": colours is not None}
    if colours is not None:
        params |= {"max_colour": max_colour, "crop": CROP, "angles": list(ANGLES), "max_pixel": max_pixel}
    if embeddings is not None:
        tables = lsh_tables or lsh_tables_for(min_cosine, lsh_bits)
        params |= {"min_cosine": min_cosine, "lsh_bits": lsh_bits, "lsh_tables": tables, "seed": seed}
    result = CheckResult("duplicates", findings, metrics, {"clusters": clusters, "params": params})
    if len(rows) < n:
        result.notes.append(f"{n - len(rows)} unreadable images have no pHash (exact duplicates only)")
    if colours is None:
        result.notes.append("plain pHashes given: no crop views and no colour check (tone variants match)")
    return result


def leakage_check(frame: pd.DataFrame, duplicates: CheckResult) -> CheckResult:
    """Val/test records whose duplicate cluster holds a train record (train-set leakage)."""
    if duplicates.skipped is not None:
        return CheckResult("leakage", skipped=f"duplicates check skipped: {duplicates.skipped}")
    splits = frame["split"] if "split" in frame.columns else [None] * len(frame)
    split_of = {
        str(i): s.strip().lower() for i, s in zip(frame["id"], splits, strict=True) if isinstance(s, str)
    }
    n_eval = sum(s in EVAL_SPLITS for s in split_of.values())
    if not n_eval or not any(s in TRAIN_SPLITS for s in split_of.values()):
        return CheckResult("leakage", skipped="needs both a train split and a val/test split")
    findings = []
    for cluster in duplicates.details.get("clusters", []):
        train = [i for i in cluster["ids"] if split_of.get(i) in TRAIN_SPLITS]
        if not train:
            continue
        for record in cluster["ids"]:
            if split_of.get(record) in EVAL_SPLITS:
                evidence = {"split": split_of[record], "cluster": cluster["cluster"], "kind": cluster["kind"]}
                evidence |= {"train_twins": train[:MAX_LISTED], "n_train_twins": len(train)}
                message = (
                    f"{split_of[record]} record has {cluster['kind']} duplicates in train, e.g. {train[0]}"
                )
                findings.append(Finding(record, "leakage", "split_leakage", "error", message, evidence))
    metrics = {"leakage": len(findings), "leakage_rate": len(findings) / n_eval}
    return CheckResult("leakage", findings=findings, metrics=metrics, details={"n_eval_records": n_eval})
