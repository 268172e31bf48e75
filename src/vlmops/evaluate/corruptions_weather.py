"""The weather corruption families of `vlmops.evaluate.corruptions`: snow, frost and fog.

Snow is a zoomed, thresholded and motion-blurred noise layer; frost blends a procedural texture of haze
and branched crystal needles; fog adds a diamond-square plasma fractal. Parameters are the published
ImageNet-C severity tuples, and the deviations from the published recipes are listed in the docstring of
`vlmops.evaluate.corruptions`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

from vlmops.evaluate.corruptions_kernels import _correlate, _motion_kernel, _rgb_to_gray, _zoom_sum

# Published severity parameters (make_imagenet_c.py), index = severity - 1.
SNOW = (  # loc, scale, zoom, threshold, blur radius, blur sigma, image blend
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # image weight, frost weight
FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # fog amount, wibble decay

FOG_MAPSIZE = 256
FROST_TINT = np.array([0.86, 0.93, 1.0])  # pale blue-white


def _snow(x: np.ndarray, i: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    loc, spread, zoom, threshold, radius, sigma, blend = SNOW[i]
    layer = rng.normal(loc=loc, scale=spread, size=x.shape[:2])
    layer = _zoom_sum(layer, np.array([max(zoom * scale, 1.0)]))
    layer[layer < threshold] = 0.0
    layer = np.clip(layer, 0.0, 1.0)[:, :, None]
    layer = _correlate(layer, _motion_kernel(radius * scale, sigma * scale, rng.uniform(-135, -45)), "edge")
    x = blend * x + (1 - blend) * np.maximum(x, _rgb_to_gray(x)[:, :, None] * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2)


def _frost_texture(h: int, w: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Procedural frost (H, W) in [0, 1]: a smooth haze plus bright crystal needles with side branches.

    Drawn at the 224-px reference resolution (or the image's own, when larger) and box-downsampled, so
    that crystal size and coverage relative to the image do not depend on its size.
    """
    unit = min(max(scale, 1.0), 2.0 * scale)  # drawing px per reference px: >= 2x the image, <= 224 px
    gh, gw = max(1, round(h * unit / scale)), max(1, round(w * unit / scale))
    haze = ndimage.gaussian_filter(rng.standard_normal((gh, gw)), 6.0 * unit, mode="wrap")
    haze = (haze - haze.mean()) / (haze.std() + 1e-12)
    # main needles: one per ~300 reference px^2, random centre, angle, length and brightness
    n = max(4, int(rng.poisson(gh * gw / unit**2 / 300)))
    centre = rng.random((n, 2)) * (gh, gw)
    angle = rng.uniform(0, np.pi, n)
    length = rng.uniform(10, 40, n) * unit
    bright = rng.uniform(0.5, 1.0, n)
    heading = np.stack([np.sin(angle), np.cos(angle)], axis=-1)
    # three side branches per needle, starting along it, at +/-60 degrees, 15-40% of its length
    along = rng.uniform(-0.5, 0.5, (n, 3, 1)) * length[:, None, None]
    branch_start = centre[:, None, :] + along * heading[:, None, :]
    branch_angle = angle[:, None] + rng.choice([-1.0, 1.0], (n, 3)) * np.pi / 3
    branch_length = length[:, None] * rng.uniform(0.15, 0.4, (n, 3))
    starts = np.concatenate([centre - 0.5 * length[:, None] * heading, branch_start.reshape(-1, 2)])
    angles = np.concatenate([angle, branch_angle.ravel()])
    lengths = np.concatenate([length, branch_length.ravel()])
    brights = np.concatenate([bright, np.repeat(0.8 * bright, 3)])
    # ~2 samples per pixel along the longest segment; each sample weighs the length it covers
    steps = math.ceil(2 * lengths.max()) + 1
    u = np.linspace(0.0, 1.0, steps)[None, :]
    rows = np.floor(starts[:, :1] + u * (lengths * np.sin(angles))[:, None]).astype(np.int64) % gh
    cols = np.floor(starts[:, 1:] + u * (lengths * np.cos(angles))[:, None]).astype(np.int64) % gw
    weight = brights[:, None] * np.sqrt(1 - 0.8 * (2 * u - 1) ** 2) * (lengths[:, None] / (steps - 1))
    crystals = np.bincount((rows * gw + cols).ravel(), weights=weight.ravel(), minlength=gh * gw)
    width = 0.8 * unit
    crystals = (
        ndimage.gaussian_filter(crystals.reshape(gh, gw), width, mode="wrap") * math.sqrt(2 * math.pi) * width
    )
    crystals = 1.0 - np.exp(-1.5 * crystals)  # a needle's core ~0.5-0.8; overlaps saturate towards 1
    frost = np.clip(0.3 + 0.06 * haze + 0.75 * crystals, 0.0, 1.0)
    if (gh, gw) != (h, w):
        frost = np.asarray(Image.fromarray(frost.astype(np.float32)).resize((w, h), Image.Resampling.BOX))
    return frost.astype(np.float64)


def _frost(x: np.ndarray, i: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    image_weight, frost_weight = FROST[i]
    frost = _frost_texture(x.shape[0], x.shape[1], scale, rng)[:, :, None] * FROST_TINT
    return image_weight * x + frost_weight * frost


def _plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map (periodic), normalised to [0, 1], as published."""
    grid = np.empty((mapsize, mapsize))
    grid[0, 0] = 0.0
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        corner = grid[0::step, 0::step]
        square = corner + np.roll(corner, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        grid[half::step, half::step] = square / 4 + wibble * rng.uniform(-wibble, wibble, square.shape)
        centre, corner = grid[half::step, half::step], grid[0::step, 0::step]
        left = centre + np.roll(centre, 1, axis=0) + corner + np.roll(corner, -1, axis=1)
        grid[0::step, half::step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        top = centre + np.roll(centre, 1, axis=1) + corner + np.roll(corner, -1, axis=0)
        grid[half::step, 0::step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        step //= 2
        wibble /= wibbledecay
    grid -= grid.min()
    return grid / grid.max()


def _fog(x: np.ndarray, i: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    amount, decay = FOG[i]
    size = max(2, round(FOG_MAPSIZE * scale))  # the published 256-px map, in this image's pixels
    # levels of the diamond-square finer than ~1 output pixel are skipped: a 2^k map has the same
    # distribution as every 2^(8-k)-th sample of the 256 map (same wibble schedule from the top)
    mapsize = min(FOG_MAPSIZE, 1 << max(1, (size - 1).bit_length()))
    plasma = _plasma_fractal(mapsize, decay, rng)
    if size < mapsize:  # anti-alias before shrinking
        plasma = ndimage.gaussian_filter(plasma, 0.5 * (mapsize / size - 1), mode="wrap")
    plasma = ndimage.zoom(plasma, size / mapsize, order=1, mode="grid-wrap", grid_mode=True)
    h, w = x.shape[:2]
    plasma = plasma[np.arange(h)[:, None] % plasma.shape[0], np.arange(w)[None, :] % plasma.shape[1]]
    max_val = x.max()
    return (x + amount * plasma[:, :, None]) * max_val / (max_val + amount)
