"""Repeated-patch finder: small pixel patterns shared by many images of one label and (almost) no others.

A trigger stamped onto images shows up as one small pixel pattern repeated across many images of one
label and (almost) nowhere else. Every image's size x size windows are hashed with a separable rolling
hash over quantised pixels; hashes common in one label only are kept, and the images sharing them are
linked into groups, each `compact` (trigger-like) or spread out (shared artwork). `poisoning_check` in
`vlmops.audit.poisoning` turns the compact groups into findings.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vlmops.data.images import load_image
from vlmops.errors import DataError
from vlmops.models.preprocess import to_rgb

BATCH = 128  # images of one shape hashed together


def _pixel_codes(image: Image.Image | np.ndarray, quant_bits: int) -> np.ndarray:
    """(H, W) uint64 codes of RGB pixels, each channel quantised by dropping `quant_bits` low bits."""
    rgb = np.asarray(image, dtype=np.uint8) >> quant_bits
    bits = 8 - quant_bits
    rgb = rgb.astype(np.uint64)
    return (rgb[..., 0] << np.uint64(2 * bits)) | (rgb[..., 1] << np.uint64(bits)) | rgb[..., 2]


def _hash_coefficients(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(
        rng.integers(0, 2**63, size, dtype=np.uint64) * np.uint64(2) + np.uint64(1) for _ in range(2)
    )


def window_hashes(codes: np.ndarray, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct hashes of the non-uniform size x size windows of a (B, H, W) stack of pixel codes.

    Returns (hash, image index in the stack, (y, x) of the hash's first window in that image). The hash
    is a separable rolling hash, sum_ij code[y+i, x+j] a_j b_i mod 2^64 (random odd a, b): rows, then
    columns, each as `size` shifted whole-stack multiply-adds (2 x size operations per pixel).
    """
    n, height, width = codes.shape
    out_h, out_w = height - size + 1, width - size + 1
    if out_h < 1 or out_w < 1 or n == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64), np.empty((0, 2), np.int32)
    a, b = _hash_coefficients(size, seed)
    row_hash = np.zeros((n, height, out_w), dtype=np.uint64)
    row_flat = np.ones((n, height, out_w), dtype=bool)
    for j in range(size):
        shifted = codes[:, :, j : j + out_w]
        row_hash += shifted * a[j]
        row_flat &= shifted == codes[:, :, :out_w]
    hashes = np.zeros((n, out_h, out_w), dtype=np.uint64)
    uniform = np.ones((n, out_h, out_w), dtype=bool)
    for i in range(size):
        hashes += row_hash[:, i : i + out_h] * b[i]
        uniform &= row_flat[:, i : i + out_h] & (codes[:, i : i + out_h, :out_w] == codes[:, :out_h, :out_w])
    hashes = np.where(uniform, np.uint64(0), hashes).reshape(n, -1)  # 0 marks "skip"
    order = np.argsort(hashes, axis=1, kind="stable")  # ties keep the first (top-left) window
    ordered = np.take_along_axis(hashes, order, axis=1)
    first = np.ones(ordered.shape, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    image, slot = np.nonzero(first & (ordered != 0))
    place = np.stack(np.divmod(order[image, slot], out_w), axis=1).astype(np.int32)
    return ordered[image, slot], image, place


def _flagged_windows(
    hashes: np.ndarray,
    slots: np.ndarray,
    bucket: np.ndarray,
    n_labels: int,
    min_share: float,
    max_elsewhere: float,
    bits: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(element, distinct-hash id, home label) of every window whose hash is common in one label only.

    Elements must come sorted by (slot, hash), one slot per image; `bucket` maps slot -> label id
    (n_labels for unlabelled). A hash belongs to label L when it is in >= max(3, min_share x |L|) images
    of L and in <= max_elsewhere as many images outside L (at most one label can satisfy that). For
    speed the count sorts (hash, slot) packed into one uint64, i.e. 64 - `bits` hash bits (`bits`: the
    slot's share, default enough for the largest slot given; `PatchHasher` passes the one it filtered
    its windows by).
    """
    bits = np.uint64(bits or slot_bits(int(slots.max(initial=0))))
    low = np.uint64((1 << int(bits)) - 1)
    ordered = np.sort((hashes & ~low) | slots.astype(np.uint64))
    prefix = ordered >> bits
    starts = np.flatnonzero(np.r_[True, prefix[1:] != prefix[:-1]])
    lengths = np.diff(np.r_[starts, len(ordered)])
    sel = np.flatnonzero(np.repeat(lengths >= 3, lengths))
    run_of = np.repeat(np.flatnonzero(lengths >= 3), lengths[lengths >= 3])
    owner = (ordered[sel] & low).astype(np.int64)
    keys, counts = np.unique(run_of * (n_labels + 1) + bucket[owner], return_counts=True)
    runs, labs = np.divmod(keys, n_labels + 1)
    need = np.maximum(3, np.ceil(min_share * np.bincount(bucket, minlength=n_labels + 1)))
    good = (labs < n_labels) & (counts >= need[labs]) & (lengths[runs] - counts <= max_elsewhere * counts)
    home = np.full(len(starts), -1)
    home[runs[good]] = labs[good]
    keep = home[run_of] >= 0
    shift = np.uint64(64) - bits  # (slot, hash prefix) keys are sorted in element order
    original = (slots.astype(np.uint64) << shift) | (hashes >> bits)
    query = (owner[keep].astype(np.uint64) << shift) | prefix[sel[keep]]
    order = np.argsort(query)  # sorted queries make searchsorted cache-friendly
    elements = np.empty(len(query), dtype=np.int64)
    elements[order] = np.searchsorted(original, query[order])
    return elements, run_of[keep], home[run_of[keep]]


def _boxes(key: np.ndarray, places: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per distinct key (sorted): the key, min y, min x, max y, max x of its windows' corners."""
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    y, x = places[order, 0], places[order, 1]
    return (ordered[starts], *(f.reduceat(v, starts) for f in (np.minimum, np.maximum) for v in (y, x)))


def _group_patches(
    owners: np.ndarray, places: np.ndarray, bucket: np.ndarray, flagged: tuple, size: int, max_extent: int
) -> list[dict]:
    """Connected groups of carrier images (linked by shared flagged windows), with each carrier's box."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    elements, runs, home = flagged  # runs come sorted
    if len(elements) == 0:
        return []
    images, n = owners[elements], len(bucket)
    mine = bucket[images] == home
    run_index = np.cumsum(np.r_[0, runs[1:] != runs[:-1]])
    shape = (n + run_index[-1] + 1,) * 2
    edges = coo_matrix((np.ones(mine.sum()), (images[mine], n + run_index[mine])), shape)
    component = connected_components(edges, directed=False)[1]
    group = component[n + run_index]
    n_windows = np.bincount(component[n:])
    key, y0, x0, y1, x1 = _boxes(group[mine] * n + images[mine], places[elements[mine]])
    g, img = np.divmod(key, n)
    h, w = y1 - y0 + size, x1 - x0 + size
    elsewhere = np.divmod(np.unique(group[~mine] * n + images[~mine]), n)
    bounds = np.r_[np.flatnonzero(np.r_[True, g[1:] != g[:-1]]), len(g)]
    out = []
    for start, stop in itertools.pairwise(bounds):
        extent = float(np.median(np.maximum(h[start:stop], w[start:stop])))
        rows = range(start, stop)
        out.append(
            {
                "label_id": int(bucket[img[start]]),
                "carriers": {int(img[r]): [int(y0[r]), int(x0[r]), int(h[r]), int(w[r])] for r in rows},
                "elsewhere": elsewhere[1][elsewhere[0] == g[start]].tolist(),
                "n_windows": int(n_windows[g[start]]),
                "extent": extent,
                "compact": extent <= max_extent,
            }
        )
    return out


@dataclass
class PatchHashes:
    """Window hashes of n images that can be flagged, sorted by (slot, hash): slots number the images in
    hashing order.

    Only windows whose hash prefix (hash >> `slot_bits`, the part `_flagged_windows` compares) is in at
    least 3 windows are kept: no other window can be flagged, and keeping them all would cost thousands
    of records per image.
    """

    size: int
    quant_bits: int
    n: int  # images added
    hashes: np.ndarray  # uint64 window hash
    slots: np.ndarray  # int64 slot of each hash
    places: np.ndarray  # (k, 2) int32 (y, x) of each hash's first window
    slot_image: np.ndarray  # int64 image index (order of `add`) of each slot
    slot_bits: int = 0  # low hash bits that `_flagged_windows` replaces by the slot (0: from `slots`)


def slot_bits(top_slot: int) -> int:
    """Bits the packed (hash prefix, slot) keys of `_flagged_windows` give the slot: enough for `top_slot`."""
    return max(1, int(top_slot).bit_length())


class PatchHasher:
    """Streaming window hasher: `add` images one at a time (kept only until their shape's batch is hashed),
    then `finish` for the `PatchHashes` that `find_repeated_patches` groups.

    Images of one shape are hashed together, BATCH at a time; their window hashes go to temporary files
    (`HashSpill`, under `spill_dir` or the system's temporary directory) and `finish` reads them back one
    partition at a time, keeping only the windows that can be flagged. Memory holds at most one batch per
    shape, the spill's write buffer and one partition. The files are removed by `finish`, by `close` (or
    leaving a ``with`` block) and at garbage collection. They take ~24 bytes per distinct window (46 KB
    per 64x64 emoji image): where the temporary directory is in memory (a tmpfs ``/tmp``), point
    ``TMPDIR`` (or `spill_dir`) at a disk.
    """

    def __init__(self, size: int = 6, quant_bits: int = 2, spill_dir: str | Path | None = None) -> None:
        from vlmops.audit.patch_spill import HashSpill

        self.size, self.quant_bits, self.n = size, quant_bits, 0
        self._spill = HashSpill(spill_dir)
        self._top_slot = 0  # the largest slot with a window hash
        self._slot_image: list[int] = []
        self._pending: dict[tuple, list] = {}

    def add(self, image: Image.Image) -> None:
        """Hash (eventually) the next image: RGB on white at native resolution (`to_rgb` is applied)."""
        codes = _pixel_codes(to_rgb(image), self.quant_bits)
        self._pending.setdefault(codes.shape, []).append((self.n, codes))
        self.n += 1
        if len(self._pending[codes.shape]) >= BATCH:
            self._flush(codes.shape)

    def _flush(self, shape: tuple) -> None:
        index, stack = zip(*self._pending.pop(shape), strict=True)
        unique, which, place = window_hashes(np.stack(stack), self.size)
        slots = len(self._slot_image) + which
        if len(slots):
            self._top_slot = max(self._top_slot, int(slots[-1]))  # `which` comes sorted
        self._spill.append(unique, slots, place)
        self._slot_image.extend(index)

    def finish(self) -> PatchHashes:
        """Hash what is pending and return the images' window hashes that can be flagged."""
        try:
            for shape in list(self._pending):
                self._flush(shape)
            bits = slot_bits(self._top_slot)
            hashes, slots, places = self._spill.shared(bits, min_count=3)
        finally:
            self.close()
        slot_image = np.asarray(self._slot_image, dtype=np.int64)
        return PatchHashes(self.size, self.quant_bits, self.n, hashes, slots, places, slot_image, bits)

    def close(self) -> None:
        """Drop pending images and remove the temporary files."""
        self._pending.clear()
        self._spill.close()

    def __enter__(self) -> PatchHasher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _hash_images(images: Sequence, size: int, quant_bits: int, progress: bool) -> PatchHashes:
    """Window hashes of all images (paths and bytes are read here)."""
    from vlmops.progress import progress_bar

    with PatchHasher(size, quant_bits) as hasher, progress_bar(progress) as bar:
        task = bar.add_task("hashing image patches", total=len(images))
        for source in images:
            hasher.add(source if isinstance(source, Image.Image) else load_image(source))
            bar.advance(task)
        return hasher.finish()


def find_repeated_patches(
    images: Sequence[str | Path | bytes | Image.Image],
    labels: Sequence,
    size: int = 6,
    quant_bits: int = 2,
    min_share: float = 0.02,
    max_elsewhere: float = 0.10,
    max_extent: int | None = None,
    progress: bool = True,
    hashed: PatchHashes | None = None,
) -> list[dict]:
    """Groups of images of one label sharing size x size patches seen in <= max_elsewhere as many others.

    A patch counts when it is in >= max(3, min_share x label size) images of the label. Images sharing
    such patches are linked into groups; a group is `compact` (trigger-like) when its shared windows
    span at most `max_extent` pixels (default 3 x size) in the median carrier, else it is shared artwork
    (variants of one drawing, near-duplicates). Images are read as RGB on white at native resolution,
    each channel quantised by dropping `quant_bits` low bits. Groups come largest first with label,
    carriers {image index: [y, x, height, width] of the shared region}, images elsewhere sharing a
    patch, n_windows (distinct shared windows) and extent. `hashed` (a `PatchHasher`'s result for these
    images, in this order, e.g. from the audit's shared image scan) skips reading the images here.
    """
    if not 4 <= size <= 8:
        raise ValueError(f"patch size must be between 4 and 8 pixels, got {size}")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels; pass one label per image")
    label_ids, names = pd.factorize(pd.Series([None if v is None or v != v else str(v) for v in labels]))
    bucket = np.where(label_ids < 0, len(names), label_ids)
    if hashed is None:
        hashed = _hash_images(images, size, quant_bits, progress)
    elif (hashed.n, hashed.size, hashed.quant_bits) != (len(images), size, quant_bits):
        raise ValueError(
            f"hashed has {hashed.n} images at size {hashed.size}, quant_bits {hashed.quant_bits}; "
            f"expected {len(images)} at size {size}, quant_bits {quant_bits}: hash these images with them"
        )
    hashes, slots, places, slot_image = hashed.hashes, hashed.slots, hashed.places, hashed.slot_image
    slot_bucket = bucket[slot_image]
    bits = hashed.slot_bits
    flagged = _flagged_windows(hashes, slots, slot_bucket, len(names), min_share, max_elsewhere, bits)
    groups = _group_patches(slots, places, slot_bucket, flagged, size, max_extent or 3 * size)
    for group in groups:
        group["carriers"] = {int(slot_image[k]): v for k, v in group["carriers"].items()}
        group["elsewhere"] = sorted(int(slot_image[k]) for k in group["elsewhere"])
        group |= {"label": str(names[group.pop("label_id")]), "size": size}
    return sorted(groups, key=lambda g: (not g["compact"], -len(g["carriers"]), g["label"]))
