"""Image reading: every image enters vlmops as RGB, transparent pixels composited on white."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlmops.errors import DataError

# Decompression-bomb guard: refuse images above this many pixels.
MAX_PIXELS = 64_000_000


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """RGB copy of `image`; any alpha channel is composited onto a white background."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: str | Path | bytes) -> Image.Image:
    """Read an image from a path or bytes as RGB on white; a clear DataError if unreadable."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except FileNotFoundError as exc:
        raise DataError(f"image file not found: {name}; check the manifest's image column") from exc
    with handle:
        try:
            image = Image.open(handle)
            if image.width * image.height > MAX_PIXELS:
                raise DataError(f"image {name} has {image.width}x{image.height} pixels, over {MAX_PIXELS}")
            image.load()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {name}: {exc}; re-export it as PNG or JPEG") from exc
    return to_rgb_on_white(image)
