"""Near-neighbour search in about linear time: Hamming balls by multi-index hashing, cosine by LSH.

* `hamming_pairs`: by pigeonhole, two 64-bit hashes within ``max_hamming`` bits agree on some band up
  to a probe radius: ``max_hamming + 1`` bands matched exactly, or (cheaper for large n) half as many,
  twice as wide bands with every 1-bit neighbour probed (`band_layout`); candidates are verified.
* `cosine_pairs`: random-hyperplane LSH over unit rows, ``tables`` x ``bits`` (by default enough tables
  for 99 % recall at ``min_cosine``), verified by exact cosine.
* `colour_distance` (`colour_distances` over index pairs) compares images' colour signatures (16x16 RGB
  thumbnails): the largest cell's mean |difference| over RGB, least over the second as is and rotated
  by each of `ANGLES`, to verify candidates that brightness-only hashes cannot tell apart.

A bucket over ``bucket_cap`` members is searched exactly, block by block, instead of listing its pairs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import numpy as np

BUCKET_CAP = 256
LSH_BITS = 16
ANGLES = (-5.0, 5.0)
_BYTE_POP = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64."""
    x = np.asarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    return _BYTE_POP[x.reshape(*x.shape, 1).view(np.uint8)].sum(axis=-1).astype(np.int64)


def _probe_pairs(keys: np.ndarray, flips: list[int], cap: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Pairs (i < j) whose keys differ by one of `flips` (0 = same key), skipping buckets over `cap`.

    Members of a bucket over `cap` are returned as (members, neighbours) blocks for exact search instead.
    """
    n, keys = len(keys), keys.astype(np.uint64)
    uniq, inverse, size = np.unique(keys, return_inverse=True, return_counts=True)
    start, order = np.cumsum(size) - size, np.argsort(inverse, kind="stable")
    own_big = size[inverse] > cap
    found_i, found_j = [], []
    for flip in flips:
        if flip == 0:
            pos, hit = inverse, ~own_big
        else:
            target = keys ^ np.uint64(flip)
            pos = np.minimum(np.searchsorted(uniq, target), len(uniq) - 1)
            hit = (uniq[pos] == target) & ~own_big & (size[pos] <= cap)
        count = np.where(hit, size[pos], 0)
        i = np.repeat(np.arange(n), count)
        j = order[np.repeat(start[pos] - np.cumsum(count) + count, count) + np.arange(count.sum())]
        found_i.append(i[i < j])
        found_j.append(j[i < j])
    blocks = []
    for key, first, z in zip(uniq[size > cap], start[size > cap], size[size > cap], strict=True):
        neighbours = np.flatnonzero(np.isin(keys, [key ^ np.uint64(f) for f in flips]))
        blocks.append((order[first : first + z], neighbours))
    return np.concatenate(found_i), np.concatenate(found_j), blocks


def _block_search(rows: np.ndarray, cols: np.ndarray, close, block: int = 1024):
    """Exact search of `rows` against `cols`, `block` rows at a time; close(a, b) -> bool matrix."""
    found_i, found_j = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for begin in range(0, len(rows), block):
        part = rows[begin : begin + block]
        a, b = np.nonzero(close(part, cols))
        keep = part[a] != cols[b]
        found_i.append(np.minimum(part[a], cols[b])[keep])
        found_j.append(np.maximum(part[a], cols[b])[keep])
    return np.concatenate(found_i), np.concatenate(found_j)


def _search(tables: Iterable[tuple[np.ndarray, list[int]]], n: int, close, cap: int):
    """Unique verified pairs over all (keys, flips) tables; close(a, b, aligned) verifies candidates."""
    codes = [np.empty(0, np.int64)]
    for keys, flips in tables:
        i, j, blocks = _probe_pairs(keys, flips, cap)
        keep = close(i, j, aligned=True)
        codes.append(i[keep].astype(np.int64) * n + j[keep])
        for members, neighbours in blocks:
            bi, bj = _block_search(members, neighbours, close)
            codes.append(bi * n + bj)
    code = np.unique(np.concatenate(codes))
    return code // n, code % n


def band_layout(n: int, max_hamming: int) -> tuple[int, int]:
    """(bands, probe radius) for multi-index hashing: bands * (radius + 1) > max_hamming (pigeonhole).

    Radius 0 (max_hamming + 1 bands, e.g. 8 bands of 8 bits) probes one key per band; radius 1 (half
    as many, twice as wide bands, every 1-bit neighbour probed) wins once n outgrows the narrow keys.
    """
    options = []
    for radius in (0, 1):
        bands = min(64, math.ceil((max_hamming + 1) / (radius + 1)))
        width = 64 / bands
        options.append((bands * (1 + radius * math.ceil(width)) * (1 + n / 2**width), bands, radius))
    return min(options)[1:]


def hamming_pairs(hashes: np.ndarray, max_hamming: int, bucket_cap: int = BUCKET_CAP):
    """(i, j, distance) of every pair of hashes within `max_hamming` bits, by multi-index hashing."""
    h = np.asarray(hashes, dtype=np.uint64)
    bands, radius = band_layout(len(h), max_hamming)
    edges = np.linspace(0, 64, bands + 1).round().astype(int)

    def close(a, b, aligned=False):
        x = h[a] ^ h[b] if aligned else h[a][:, None] ^ h[b][None, :]
        return popcount(x) <= max_hamming

    tables = (
        (
            (h >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1),
            [0] + [1 << b for b in range(hi - lo)] * radius,
        )
        for lo, hi in itertools.pairwise(edges)
    )
    i, j = _search(tables, len(h), close, bucket_cap)
    return i, j, popcount(h[i] ^ h[j])


def lsh_tables_for(min_cosine: float, bits: int = LSH_BITS, recall: float = 0.99) -> int:
    """Tables needed so a pair at cosine `min_cosine` shares a bucket in one of them with `recall`."""
    p_same = (1 - math.acos(min(max(min_cosine, -1.0), 1.0)) / math.pi) ** bits
    return int(min(64, max(1, math.ceil(math.log(1 - recall) / math.log1p(-p_same)))))


def cosine_pairs(
    embeddings: np.ndarray,
    min_cosine: float,
    tables: int | None = None,
    bits: int = LSH_BITS,
    seed: int = 0,
    bucket_cap: int = BUCKET_CAP,
):
    """(i, j, cosine) of pairs of unit rows with cosine >= `min_cosine`, by random-hyperplane LSH."""
    emb = np.asarray(embeddings, dtype=np.float32)
    tables = tables or lsh_tables_for(min_cosine, bits)
    planes = np.random.default_rng(seed).standard_normal((emb.shape[1], tables * bits)).astype(np.float32)
    signs = (emb @ planes > 0).reshape(len(emb), tables, bits)
    keys = (signs.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(axis=2)

    def close(a, b, aligned=False):
        sim = np.einsum("ij,ij->i", emb[a], emb[b]) if aligned else emb[a] @ emb[b].T
        return sim >= min_cosine

    i, j = _search(((keys[:, t], [0]) for t in range(tables)), len(emb), close, bucket_cap)
    return i, j, np.einsum("ij,ij->i", emb[i], emb[j])


def _rotation(angle: float, size: int = 16, margin: float = 2.0):
    """Bilinear resampling of a size x size grid rotated by `angle` deg: (cells, weights, kept cells)."""
    c, t = (size - 1) / 2, np.deg2rad(angle)
    yy, xx = np.mgrid[0:size, 0:size].reshape(2, -1) - c
    y, x = c + yy * np.cos(t) - xx * np.sin(t), c + yy * np.sin(t) + xx * np.cos(t)
    keep = (np.minimum(y, x) >= margin) & (np.maximum(y, x) <= size - 1 - margin)
    y0, x0 = np.clip(np.floor(y), 0, size - 2), np.clip(np.floor(x), 0, size - 2)
    fy, fx = np.clip(y - y0, 0, 1), np.clip(x - x0, 0, 1)
    cells = np.stack([(y0 + a) * size + x0 + b for a in (0, 1) for b in (0, 1)]).astype(np.intp)
    weights = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
    return cells[:, keep], weights[:, keep].astype(np.float32), keep


_ROTATIONS = [_rotation(a) for a in ANGLES]


def planar(colours: np.ndarray) -> np.ndarray:
    """Colour signatures (m, 16, 16, 3) as contiguous planar rows (m, 3, 256)."""
    return np.ascontiguousarray(colours.reshape(len(colours), -1, 3).transpose(0, 2, 1))


def _cell_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The largest cell's mean |a - b| over RGB, for planar uint8 signatures (m, 3, cells)."""
    d = np.maximum(a, b) - np.minimum(a, b)
    return (d[:, 0].astype(np.uint16) + d[:, 1] + d[:, 2]).max(axis=1, initial=0) / 3


def _turn(flat: np.ndarray, cells: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Planar signatures rotated (bilinear) by one of `_ROTATIONS`: their kept cells, as uint8."""
    return np.einsum("mckx,kx->mcx", flat[:, :, cells], weights).round().astype(np.uint8)


def colour_distances(flat: np.ndarray, i: np.ndarray, j: np.ndarray, limit: float, block: int = 4096):
    """colour_distance(flat[i], flat[j]) of planar signatures, rotating each flat[j] needed only once."""
    out = np.zeros(len(i), dtype=np.float32)
    for s in range(0, len(i), block):
        out[s : s + block] = _cell_max(flat[i[s : s + block]], flat[j[s : s + block]])
    for cells, weights, keep in _ROTATIONS:
        todo = np.flatnonzero(out > limit)
        if not todo.size:
            break
        need, where = np.unique(j[todo], return_inverse=True)
        turned = np.concatenate(
            [_turn(flat[need[s : s + block]], cells, weights) for s in range(0, len(need), block)]
        )
        for s in range(0, len(todo), block):
            d = _cell_max(flat[i[todo[s : s + block]]][:, :, keep], turned[where[s : s + block]])
            out[todo[s : s + block]] = np.minimum(out[todo[s : s + block]], d)
    return out


def colour_distance(a: np.ndarray, b: np.ndarray, limit: float = 0.0) -> np.ndarray:
    """Per pair of colour signatures (m, 16, 16, 3): the largest cell's mean |a - b| over RGB (0-255).

    The least over `b` as is and rotated by each of `ANGLES` (cells the rotation brings in from outside
    the frame are skipped); rotations are only tried where the distance is still over `limit` (a pair at
    most `limit` apart as is gets its unrotated distance).
    """
    m = len(a)
    return colour_distances(planar(np.concatenate([a, b])), np.arange(m), np.arange(m, 2 * m), limit)
