"""Filtering and resampling primitives shared by the corruption families in `vlmops.evaluate.corruptions`.

Gaussian blurs, kernel correlation (direct for sparse kernels, FFT for dense ones), the exact bilinear
zoom about the image centre, reflect-mode Gaussian matrices, bilinear splatting, the motion-blur and
disk kernels, and RGB-to-luma conversion. All are deterministic: the families draw their own randomness.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, signal, sparse

DIRECT_TAPS_MAX = 150  # kernels with more non-zero taps are applied by FFT


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest") -> np.ndarray:
    """skimage.filters.gaussian over the two spatial axes (mode 'nearest', truncate 4)."""
    sigmas = (sigma, sigma) + (0.0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, sigma=sigmas, mode=mode)


def _correlate(x: np.ndarray, kernel: np.ndarray, pad_mode: str) -> np.ndarray:
    """out(p) = sum_o kernel[c + o] * x(p + o) for an odd square kernel centred at c; numpy pad mode."""
    h, w = x.shape[:2]
    half = kernel.shape[0] // 2
    padded = np.pad(x, ((half, half), (half, half), (0, 0)), mode=pad_mode)
    taps = np.argwhere(kernel > 0)
    if len(taps) > DIRECT_TAPS_MAX:
        flipped = kernel[::-1, ::-1, None]  # convolution with the flipped kernel is correlation
        return signal.fftconvolve(padded, flipped, mode="valid", axes=(0, 1))
    out = np.zeros_like(x)
    for a, b in taps:  # sparse kernels (lines, small disks): a sum of shifted copies
        out += kernel[a, b] * padded[a : a + h, b : b + w]
    return out


def _zoom_stack(n: int, factors: np.ndarray) -> sparse.csr_array:
    """Bilinear matrices zooming n samples in by each factor (>= 1) about their centre, stacked (F*n, n)."""
    centre = (n - 1) / 2
    src = (centre + (np.arange(n)[None, :] - centre) / factors[:, None]).ravel()
    lo = np.clip(np.floor(src).astype(np.int64), 0, n - 1)
    frac = src - lo
    rows = np.tile(np.arange(src.size), 2)
    cols = np.concatenate([lo, np.minimum(lo + 1, n - 1)])
    return sparse.csr_array((np.concatenate([1 - frac, frac]), (rows, cols)), shape=(src.size, n))


def _zoom_sum(x: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Sum over `factors` (each >= 1) of `x` zoomed in about its centre, same shape (bilinear, separable)."""
    h, w = x.shape[:2]
    n = len(factors)
    along_h = (_zoom_stack(h, factors) @ x.reshape(h, -1)).reshape(n, h, w, -1)
    along_h = along_h.transpose(0, 2, 1, 3).reshape(n * w, -1)  # rows (factor, input column)
    stack_w = _zoom_stack(w, factors).tocoo()  # rows (factor, output column)
    factor, out_col = np.divmod(stack_w.coords[0], w)
    merged = sparse.csr_array((stack_w.data, (out_col, factor * w + stack_w.coords[1])), shape=(w, n * w))
    return (merged @ along_h).reshape(w, h, -1).transpose(1, 0, 2).reshape(x.shape)


def _gaussian_matrix(n: int, sigma: float, truncate: float) -> np.ndarray:
    """(n, n) matrix of scipy's gaussian_filter1d with mode 'reflect' (any sigma, also wider than n)."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    pos = (np.arange(n)[:, None] + offsets[None, :]) % (2 * n)
    pos = np.where(pos < n, pos, 2 * n - 1 - pos)  # half-sample symmetric reflection, period 2n
    rows = np.repeat(np.arange(n), len(offsets))
    flat = np.bincount(rows * n + pos.ravel(), weights=np.tile(weights, n), minlength=n * n)
    return flat.reshape(n, n)


def _splat(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accumulate `weights` at real-valued (rows, cols) with bilinear weights; outside points are dropped."""
    h, w = shape
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    fr, fc = rows - r0, cols - c0
    out = np.zeros(h * w)
    for dr, dc, wt in (
        (0, 0, (1 - fr) * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 0, fr * (1 - fc)),
        (1, 1, fr * fc),
    ):
        r, c = r0 + dr, c0 + dc
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        out += np.bincount(r[ok] * w + c[ok], weights=(weights * wt)[ok], minlength=h * w)
    return out.reshape(h, w)


def _motion_kernel(radius: float, sigma: float, angle_deg: float) -> np.ndarray:
    """ImageMagick's motion-blur kernel: half-Gaussian weights along a ray of length 2*radius."""
    length = 2.0 * radius
    t = np.linspace(0.0, length, max(2, math.ceil(4 * length) + 1))
    weights = np.exp(-(t**2) / (2.0 * sigma**2))
    half = math.ceil(length) + 1
    theta = math.radians(angle_deg)
    kernel = _splat(
        (2 * half + 1, 2 * half + 1), half + t * math.sin(theta), half + t * math.cos(theta), weights
    )
    return kernel / kernel.sum()


def _disk_kernel(radius: float, alias_sigma: float, supersample: int = 8) -> np.ndarray:
    """Area coverage of a disk of `radius` pixels, Gaussian anti-aliased (3x3), summing to 1."""
    half = math.ceil(radius) + 1
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    fine = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel()
    inside = fine[:, None] ** 2 + fine[None, :] ** 2 <= radius**2
    n = 2 * half + 1
    kernel = inside.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
    kernel = ndimage.gaussian_filter(kernel, alias_sigma, mode="mirror", radius=1)
    return kernel / kernel.sum()


def _rgb_to_gray(x: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as cv2.COLOR_RGB2GRAY."""
    return x @ np.array([0.299, 0.587, 0.114])
