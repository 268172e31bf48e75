"""Untrusted image bytes to an RGB PIL image, or an ApiError that says what is wrong.

Checks run cheapest first: empty body, format sniffed from the header (not the file name or
content-type), pixel count from the header (before any decoding, so a decompression bomb costs
nothing), animation, then the full decode (truncated files fail here). Accepted images go through
`vlmops.models.preprocess.to_rgb`, the same conversion every model adapter applies (upright by EXIF
orientation, 16-bit and CMYK to 8-bit RGB, transparency on white), so the statistics logged and the
vectors served are those of the image a library user or `vlmops eval` would embed.

Images far larger than the model's input are reduced as early as the format allows (a JPEG is
decoded at 1/2, 1/4 or 1/8 scale in draft mode; others are box-reduced right after decoding) to no
less than `REDUCE_MARGIN` times the model's input side, so a request holds a small image while it
waits for the model. Decoding itself is budgeted: `reserve(pixels)` is called with the full pixel count
before any pixel is decoded (it may refuse), and `release(pixels)` when the decoder's buffers are gone.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import time
import warnings
from collections.abc import Callable

from PIL import Image, UnidentifiedImageError

from vlmops.models.image_stats import describe_image
from vlmops.models.preprocess import ORIENTATION, to_rgb
from vlmops.serve.errors import ApiError
from vlmops.serve.limits import Limits

REDUCE_MARGIN = 4  # keep at least 4x the model's input side: its own resize sees nearly the same pixels
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


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


def png_pixels(data: bytes) -> int | None:
    """Width x height that a PNG's header (IHDR) declares, without decoding; None for anything else."""
    if len(data) >= 24 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width * height
    return None


def decode_image(data: bytes, limits: Limits, field: str = "image") -> Image.Image:
    """Validated, upright RGB image from untrusted bytes."""
    return _decode(data, limits, field)[0]


def decode_and_describe(data: bytes, limits: Limits, field: str = "image") -> tuple[Image.Image, dict]:
    """`decode_image` plus the image statistics the log keeps (the gateway's `decode_checked` and
    `describe_decoded`, in one call)."""
    image, image_format, size = decode_checked(data, limits, field)
    return image, describe_decoded(image, data, image_format, size)


def decode_checked(
    data: bytes,
    limits: Limits,
    field: str = "image",
    model_side: int | None = None,
    reserve: Callable[[int], None] | None = None,
    release: Callable[[int], None] | None = None,
    deadline: float | None = None,
) -> tuple[Image.Image, str, tuple[int, int]]:
    """The validated image (every check, the full decode; reduced towards `model_side`), the format its
    header named and its size as sent, for `describe_decoded` to describe now or later. `deadline`
    (perf_counter time): a job that starts after it raises a 504 instead of decoding for a request that
    is gone."""
    if deadline is not None and time.perf_counter() > deadline:
        raise ApiError(504, "timeout", f"{field} was not decoded before the request's deadline; retry later")
    return _decode(data, limits, field, model_side, reserve, release)


def describe_decoded(image: Image.Image, data: bytes, image_format: str, size: tuple[int, int]) -> dict:
    """The image statistics the log keeps, for an image from `decode_checked` (its full size as sent)."""
    stats = describe_image(image, data, image_format)
    stats.update(width=size[0], height=size[1], aspect=size[0] / size[1])
    return stats


def _target(size: tuple[int, int], model_side: int | None) -> tuple[int, int] | None:
    """The smallest size worth keeping for a model with `model_side` input, or None to keep all."""
    if not model_side:
        return None
    side = REDUCE_MARGIN * model_side
    return (side, side) if max(size) > side else None


def _decode(
    data: bytes,
    limits: Limits,
    field: str,
    model_side: int | None = None,
    reserve: Callable[[int], None] | None = None,
    release: Callable[[int], None] | None = None,
) -> tuple[Image.Image, str, tuple[int, int]]:
    """The validated, upright RGB image, the format its header named and its size as sent."""
    image = _open(data, limits, field)
    width, height = image.size
    if getattr(image, "n_frames", 1) > 1:
        raise ApiError(
            422, "animated_image", f"{field} has {image.n_frames} frames; send a single still frame"
        )
    if reserve is not None:
        reserve(width * height)
    try:
        return _load(image, field, _target((width, height), model_side))
    finally:
        if release is not None:
            release(width * height)


def _open(data: bytes, limits: Limits, field: str) -> Image.Image:
    """The lazily opened image, after the checks its header allows (format, pixel count)."""
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
    if image.format not in limits.formats:
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
    return image


def _load(
    image: Image.Image, field: str, target: tuple[int, int] | None
) -> tuple[Image.Image, str, tuple[int, int]]:
    image_format, size = image.format, image.size
    try:
        if target is not None and image_format == "JPEG":
            image.draft("RGB", target)  # libjpeg scales while decoding: the full image never exists
        image.load()
        orientation = image.getexif().get(ORIENTATION, 1)
        image = to_rgb(image)  # upright, 8-bit, transparency on white
        if orientation in SWAPS_SIDES:
            size = size[::-1]
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(
            422, "corrupt_image", f"{field} could not be decoded ({exc}); the file is truncated or corrupt"
        ) from exc
    if image.width == 0 or image.height == 0:
        raise ApiError(422, "empty_image", f"{field} has no pixels ({image.width}x{image.height})")
    if target is not None:
        factors = (max(1, image.width // target[0]), max(1, image.height // target[1]))
        if factors != (1, 1):  # a box average, close to what the model's own resize does
            image = image.reduce(factors)
    return image, image_format, size


def _names(limits: Limits) -> str:
    return ", ".join(sorted(limits.formats))
