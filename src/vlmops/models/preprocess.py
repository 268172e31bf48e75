"""Image preprocessing shared by every adapter and the ONNX bundle, in Pillow and numpy only.

`to_rgb` is the one image-to-RGB conversion in vlmops: every adapter applies it to every image it
embeds, so a PNG with alpha, a palette image, a 16-bit scan or a CMYK JPEG gives the same vector
through the library (``embed_images([Image.open(path)])``), evaluation, the gateway and an ONNX
bundle. Code that needs RGB pixels for something other than a model (corruptions, image statistics,
thumbnails) calls the same function.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

ORIENTATION = 0x0112  # EXIF tag
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16/32-bit integer grey: scaled, not clipped
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Version of `to_rgb`, part of every adapter's transform_id (the embedding cache key): bump it when the
# conversion changes, so vectors cached under the old one are not reused. rgb2: 16-bit grey scaled
# (not clipped) and EXIF orientation applied everywhere.
TO_RGB_ID = "rgb2"


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB: upright by its EXIF orientation, 16-bit grey scaled to 8 bit (PIL's own
    convert would clip it to white), CMYK through PIL's conversion, and any transparency (alpha
    channel or palette transparency) composited on white. An upright RGB image is returned as is."""
    if image.getexif().get(ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in WIDE_MODES:
        grey = np.asarray(image).astype(np.float64) / 256.0
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":  # float grey, read as 0..255
        return image.convert("L").convert("RGB")
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def pixel_array(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """PIL images of any mode -> float32 array (n, 3, size, size) scaled to [-1, 1].

    Each image goes through `to_rgb` and is bicubic-resized when its size differs.
    """
    arrays = []
    for image in images:
        rgb = to_rgb(image)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(rgb, dtype=np.uint8))
    if not arrays:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    batch = np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)).astype(np.float32)
    return batch / np.float32(127.5) - np.float32(1.0)
