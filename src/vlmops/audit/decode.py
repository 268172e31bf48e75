"""Open and decode one image file for the audit, naming what is wrong with it instead of raising.

`decode` reads a file once: its size, the header (format, width, height), a decompression-bomb check
on the header before any pixel is decoded, then the pixels. Problems become an ``error`` kind
(``unreadable``, ``zero_byte``, ``truncated``, ``decompression_bomb``: the quality check's file
problems) and a message. Every image check of the audit reads from the one `Decoded`
(see `vlmops.audit.scan`), so a file is decoded once however many checks look at it.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlmops.data.images import MAX_PIXELS
from vlmops.models.preprocess import to_rgb


@dataclass
class Decoded:
    """One file as read: size, header fields, the decoded image (None on failure) and the error if any."""

    path: str
    bytes: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    image: Image.Image | None = None
    error: str | None = None
    error_message: str | None = None

    @property
    def readable(self) -> bool:
        """The pixels decoded and there are some (what `vlmops.data.images.load_image` accepts)."""
        return self.image is not None and self.image.width * self.image.height > 0

    @cached_property
    def rgb(self) -> Image.Image:
        """The image as 8-bit RGB on white (`to_rgb`), converted once for every consumer; do not modify."""
        if self.image is None:
            raise ValueError(f"{self.path} did not decode ({self.error}): it has no RGB view")
        return to_rgb(self.image)


def decode(path: str | Path) -> Decoded:
    """Read and decode `path` once; never raises for a bad file (see `Decoded.error`)."""
    out = Decoded(str(path))

    def fail(kind: str, message: str) -> Decoded:
        out.image, out.error, out.error_message = None, kind, message
        return out

    try:
        out.bytes = os.path.getsize(out.path)
    except OSError as exc:
        return fail("unreadable", f"cannot stat file: {exc}")
    if out.bytes == 0:
        return fail("zero_byte", "file is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(out.path) as image:
                out.format, out.width, out.height = image.format, image.width, image.height
                if image.width * image.height > MAX_PIXELS:  # header only: nothing decoded yet
                    return fail("decompression_bomb", f"{image.width}x{image.height} over {MAX_PIXELS} px")
                image.load()
                out.image = image
        except Image.DecompressionBombError as exc:  # Pillow's own limit, raised while opening
            found = re.search(r"\((\d+) pixels\)", str(exc))
            return fail("decompression_bomb", f"{found.group(1) if found else '?'} px: {exc}")
        except UnidentifiedImageError as exc:
            return fail("unreadable", f"not an image Pillow can identify: {exc}")
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            return fail(decode_error_kind(exc), f"cannot decode: {exc}")
    return out


def decode_error_kind(exc: BaseException) -> str:
    """'truncated' for an exception that says the data ended early, else 'unreadable'."""
    return "truncated" if "truncat" in str(exc).lower() or isinstance(exc, EOFError) else "unreadable"
