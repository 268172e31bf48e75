"""Statistics of one image as the models see it: size, shape, brightness, contrast, bytes and format.

A property of the image, below every layer that logs or compares them: the gateway describes every
decoded image (`serve.decode`), the monitor describes its reference images the same way and tests
for drift (`monitor.image_stats.ImageStatsDetector`).
"""

from __future__ import annotations

import io

from PIL import Image, ImageStat

from vlmops.models.preprocess import to_rgb

THUMBNAIL_SIDE = 64


def sniff_format(data: bytes) -> str:
    """The image format named by the file's header ("PNG", "JPEG", ...), or "unknown"."""
    try:
        return Image.open(io.BytesIO(data)).format or "unknown"
    except (OSError, SyntaxError, ValueError):  # a header Pillow cannot read
        return "unknown"


def describe_image(image: Image.Image, data: bytes, image_format: str | None = None) -> dict:
    """Statistics of one decoded image and its encoded bytes (brightness/contrast on a grey thumbnail).

    `image_format` is the format its decoder saw; without it the header of `data` is read again.
    Any PIL mode is read as the models see it (`to_rgb`: upright, transparency on white).
    """
    image = to_rgb(image)
    width, height = image.size
    factor = max(1, max(width, height) // THUMBNAIL_SIDE)
    small = image.reduce(factor) if factor > 1 else image  # box-average first: a 12 MP photo costs ~20 ms
    stat = ImageStat.Stat(small.convert("L"))
    return {
        "width": width,
        "height": height,
        "aspect": width / height,
        "brightness": stat.mean[0],
        "contrast": stat.stddev[0],
        "bytes": len(data),
        "format": image_format or sniff_format(data),
    }
