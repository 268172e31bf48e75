"""Untrusted image bytes to an RGB PIL image, or an ApiError that says what is wrong.

Checks run cheapest first: empty body, format sniffed from the header (not the file name or
content-type), pixel count from the header (before any decoding, so a decompression bomb costs
nothing), animation, then the full decode (truncated files fail here). Accepted images go through
`vlmops.models.preprocess.to_rgb`, the same conversion every model adapter applies (upright by EXIF
orientation, 16-bit and CMYK to 8-bit RGB, transparency on white), so the statistics logged and the
vectors served are those of the image a library user or `vlmops eval` would embed.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from vlmops.models.preprocess import to_rgb
from vlmops.monitor.image_stats import describe_image
from vlmops.serve.errors import ApiError
from vlmops.serve.limits import Limits


def decode_base64(data: str, field: str) -> bytes:
    """Standard or URL-safe base64 (a ``data:`` URL prefix is allowed) to bytes."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    cleaned = "".join(data.split()).replace("-", "+").replace("_", "/")  # URL-safe alphabet too
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(
            422, "invalid_base64", f"{field} is not valid base64 ({exc}); encode the file bytes with base64"
        ) from exc


def decode_image(data: bytes, limits: Limits, field: str = "image") -> Image.Image:
    """Validated, upright RGB image from untrusted bytes."""
    return _decode(data, limits, field)[0]


def decode_and_describe(data: bytes, limits: Limits, field: str = "image") -> tuple[Image.Image, dict]:
    """`decode_image` plus the image statistics that the log keeps for drift monitoring."""
    image, image_format = _decode(data, limits, field)
    return image, describe_image(image, data, image_format)


def _decode(data: bytes, limits: Limits, field: str) -> tuple[Image.Image, str]:
    """The validated, upright RGB image and the format its header named."""
    if not data:
        raise ApiError(422, "empty_image", f"{field} is empty (0 bytes); send the image file's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ApiError(
            415, "unsupported_image", f"{field} is not an image Pillow can identify; send {_names(limits)}"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, "image_too_large", f"{field}: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # a header that ends early or lies
        raise ApiError(
            422, "corrupt_image", f"{field} could not be read ({exc}); the file is truncated or corrupt"
        ) from exc
    image_format = image.format
    if image_format not in limits.formats:
        raise ApiError(
            415, "unsupported_format", f"{field} is {image.format}; allowed formats: {_names(limits)}"
        )
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"{field} is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}; "
            "resize it before sending",
        )
    if getattr(image, "n_frames", 1) > 1:
        raise ApiError(
            422, "animated_image", f"{field} has {image.n_frames} frames; send a single still frame"
        )
    if image.width == 0 or image.height == 0:
        raise ApiError(422, "empty_image", f"{field} has no pixels ({image.width}x{image.height})")
    try:
        image.load()
        return to_rgb(image), image_format
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(
            422, "corrupt_image", f"{field} could not be decoded ({exc}); the file is truncated or corrupt"
        ) from exc


def _names(limits: Limits) -> str:
    return ", ".join(sorted(limits.formats))
