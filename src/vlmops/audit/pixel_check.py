"""Pixel verification of near-duplicate candidates: is one image an edited copy of the other?

pHash and the colour signature (16x16, blurred) cannot see a detail a few pixels wide: two emoji of one
vendor that differ only in the mouth (imp and smiling face with horns, kissing faces), the same shape as
a circle and as a square, or OpenMoji's line-art faces all pass them. This check compares the pair at
64x64 RGB on white, both lightly blurred (sigma `PRE_BLUR` px, so that a resized copy's soft edges do not
count), and takes the largest value of the per-pixel mean |difference| over RGB after blurring it too
(sigma `DIFF_BLUR` px): a missing stroke is a concentrated difference, re-encoding noise is not. The
least over the edits the check is defined for (as is, either image's `CROP` centre crop against the
other, either rotated by each of `ANGLES`) must be at most `MAX_PIXEL`.

Chosen on 100 resized (0.7x) and 100 JPEG q40 copies of random emoji against 17 pairs of distinct emoji
that `bench/audit_clean.py` found as near duplicates (a one-off analysis, not kept): copies' largest
value 17.6 (resize) and 30.9 (JPEG), distinct pairs 50.9 to 142; crop and rotation copies are 0 at
their own edit. See bench/RESULTS.md for recall on `bench/audit_recall.py` and false findings on clean data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from vlmops.data.images import load_image
from vlmops.errors import DataError
from vlmops.models.preprocess import to_rgb

SIZE = 64
PRE_BLUR = 1.0
DIFF_BLUR = 1.0
MAX_PIXEL = 40.0
CROP = 0.9
ANGLES = (-5.0, 5.0)


def _render(image: Image.Image, crop: bool = False, angle: float = 0.0) -> np.ndarray:
    """SIZE x SIZE RGB float32 of an RGB image (optionally its centre crop, rotated on white), blurred."""
    if crop:
        w, h = image.size
        dx, dy = round(w * (1 - CROP) / 2), round(h * (1 - CROP) / 2)
        image = image.crop((dx, dy, w - dx, h - dy))
    image = image.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    if angle:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    return gaussian_filter(np.asarray(image, np.float32), (PRE_BLUR, PRE_BLUR, 0))


def _views(image: Image.Image) -> dict[str, np.ndarray]:
    views = {"whole": _render(image), "crop": _render(image, crop=True)}
    views |= {f"turn{a:+g}": _render(image, angle=a) for a in ANGLES}
    return views


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(gaussian_filter(np.abs(a - b).mean(axis=2), DIFF_BLUR).max())


def pixel_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Least largest blurred difference of two images' views over the edits (see the module docstring)."""
    pairs = [("whole", "whole"), ("crop", "whole"), ("whole", "crop")]
    pairs += [(f"turn{t:+g}", "whole") for t in ANGLES]
    return min(_difference(a[x], b[y]) for x, y in pairs)


def pixel_distances(paths: Sequence[str], i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """pixel_distance of each pair (paths[i], paths[j]); NaN where either image cannot be read."""
    cache: dict[int, dict[str, np.ndarray] | None] = {}

    def views(k: int) -> dict[str, np.ndarray] | None:
        if k not in cache:
            cache[k] = None
            with contextlib.suppress(DataError):
                cache[k] = _views(to_rgb(load_image(paths[k])))
        return cache[k]

    out = np.full(len(i), np.nan)
    for n, (a, b) in enumerate(zip(i.tolist(), j.tolist(), strict=True)):
        va, vb = views(a), views(b)
        if va is not None and vb is not None:
            out[n] = pixel_distance(va, vb)
    return out
