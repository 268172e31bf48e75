"""Image reading: a path or bytes to a decoded PIL image, or a DataError naming the file and the fix.

Images are returned in the mode they were stored in (RGBA, P, I;16, CMYK...): the conversion to RGB
on white is a model's preprocessing (`vlmops.models.preprocess.to_rgb`), applied by every adapter, so
an image read here and one opened by a user with ``Image.open`` give the same embedding.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlmops.errors import DataError

# Decompression-bomb guard: refuse images above this many pixels.
MAX_PIXELS = 64_000_000


def load_image(source: str | Path | bytes) -> Image.Image:
    """Read and fully decode an image from a path or bytes; a clear DataError if unreadable."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except FileNotFoundError as exc:
        raise DataError(f"image file not found: {name}; check the manifest's image column") from exc
    except OSError as exc:
        raise DataError(f"cannot open image {name}: {exc}") from exc
    with handle:
        try:
            image = Image.open(handle)
            check_size(image, name)
            image.load()
        except UnidentifiedImageError as e:
            raise DataError(
                f"cannot read image {name}: not an image file Pillow can read (unknown format or corrupt "
                "header); re-export it as PNG or JPEG"
            ) from e
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {name}: {e}; re-export it as PNG or JPEG") from e
    return image


def check_size(image: Image.Image, name: str) -> None:
    """DataError if the header's pixel count is zero or over MAX_PIXELS."""
    if image.width * image.height > MAX_PIXELS:
        raise DataError(f"image {name} has {image.width}x{image.height} pixels, over {MAX_PIXELS}")
    if image.width == 0 or image.height == 0:
        raise DataError(f"image {name} has no pixels ({image.width}x{image.height})")


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """Deprecated: use `vlmops.models.preprocess.to_rgb`, the one conversion every model applies."""
    import warnings

    from vlmops.models.preprocess import to_rgb  # deferred: the conversion lives in the models layer

    warnings.warn(
        "vlmops.data.images.to_rgb_on_white is deprecated; use vlmops.models.preprocess.to_rgb",
        DeprecationWarning,
        stacklevel=2,
    )
    return to_rgb(image)
