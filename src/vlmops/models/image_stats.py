"""Statistics of one image as the models see it: size, shape, brightness, contrast, bytes and format.

A property of the image, below every layer that logs or compares them: the gateway describes every
decoded image (`serve.decode`), the monitor describes its reference images the same way and tests
for drift (`monitor.image_stats.ImageStatsDetector`).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from vlmops.models.preprocess import to_rgb

THUMBNAIL_SIDE = 64
_LEVELS = np.arange(256, dtype=np.int64)
_SQUARES = _LEVELS**2


def sniff_format(data: bytes) -> str:
    """The image format named by the file's header ("PNG", "JPEG", ...), or "unknown"."""
    try:
        return Image.open(io.BytesIO(data)).format or "unknown"
    except (OSError, SyntaxError, ValueError):  # a header Pillow cannot read
        return "unknown"


def grey_mean_std(grey: Image.Image) -> tuple[float, float]:
    """Mean and standard deviation of an "L" image, from its histogram: PIL's `ImageStat.Stat` values
    (the same sums in the same order), without its Python loops over the 256 bins."""
    counts = np.asarray(grey.histogram(), dtype=np.int64)
    n = int(counts.sum())
    if not n:
        return 0.0, 0.0
    total, squares = int(counts @ _LEVELS), int(counts @ _SQUARES)  # integers: exact
    return total / n, math.sqrt((squares - total**2 / n) / n)


def describe_image(image: Image.Image, data: bytes, image_format: str | None = None) -> dict:
    """Statistics of one decoded image and its encoded bytes (brightness/contrast on a grey thumbnail).

    `image_format` is the format its decoder saw; without it the header of `data` is read again.
    Any PIL mode is read as the models see it (`to_rgb`: upright, transparency on white).
    """
    image = to_rgb(image)
    width, height = image.size
    factor = max(1, max(width, height) // THUMBNAIL_SIDE)
    small = image.reduce(factor) if factor > 1 else image  # box-average first: a 12 MP photo costs ~20 ms
    brightness, contrast = grey_mean_std(small.convert("L"))
    return {
        "width": width,
        "height": height,
        "aspect": width / height,
        "brightness": brightness,
        "contrast": contrast,
        "bytes": len(data),
        "format": image_format or sniff_format(data),
    }
