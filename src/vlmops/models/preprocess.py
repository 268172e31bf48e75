"""Image preprocessing of the built-in model in numpy only, shared by the torch and ONNX runtimes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def pixel_array(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """PIL images -> float32 array (n, 3, size, size) scaled to [-1, 1].

    Each image is converted with ``convert("RGB")`` (images read by `vlmops.data.images.load_image`
    are already RGB on white, so this is a no-op for them) and bicubic-resized when its size differs.
    """
    arrays = []
    for image in images:
        rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(rgb, dtype=np.uint8))
    if not arrays:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    batch = np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)).astype(np.float32)
    return batch / np.float32(127.5) - np.float32(1.0)
