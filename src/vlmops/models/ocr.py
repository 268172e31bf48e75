"""Text written inside images, read by Tesseract (the `tesseract` binary; Debian's `tesseract-ocr`).

A thin wrapper, no OCR of our own: each image goes to `tesseract stdin stdout` as PNG (flattened on
white, small images enlarged so glyphs reach the size Tesseract reads best), and the text comes back
with its whitespace collapsed, so a sentence wrapped over several lines reads as one line. Calls run
in a small thread pool (each is a process; `OMP_THREAD_LIMIT=1` keeps one call on one core).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from PIL import Image

from vlmops.errors import MissingDependencyError, VlmopsError
from vlmops.models.preprocess import to_rgb

INSTALL_HINT = "install it with `sudo apt-get install tesseract-ocr` (or run scripts/system-deps.sh)"


class OCRError(VlmopsError):
    """Tesseract failed on one image (timed out, crashed, or the image could not be read)."""


@dataclass(frozen=True)
class TesseractOCR:
    """Reads the text in images with the `tesseract` binary (`lang`: its traineddata, `psm`: page
    segmentation mode, 3 = automatic; `min_side`: smaller images are enlarged to about this size)."""

    binary: str = "tesseract"
    lang: str = "eng"
    psm: int = 3
    timeout_s: float = 30.0
    min_side: int = 256

    @cached_property
    def path(self) -> str:
        """The binary's full path; MissingDependencyError naming the fix when it is not installed."""
        found = shutil.which(self.binary)
        if found is None:
            raise MissingDependencyError(f"reading text in images needs {self.binary!r}, not found on PATH: "
                                         + INSTALL_HINT)  # fmt: skip
        return found

    @cached_property
    def version(self) -> str:
        """Engine, version and settings, e.g. 'tesseract-5.3.0:eng:psm3:256' (a cache key for its output)."""
        out = subprocess.run(
            [self.path, "--version"], capture_output=True, text=True, timeout=self.timeout_s, check=False
        )
        first = (out.stdout or out.stderr).split("\n", 1)[0].split()
        number = first[1] if len(first) > 1 else "unknown"
        return f"tesseract-{number}:{self.lang}:psm{self.psm}:{self.min_side}"

    def read(self, image: Image.Image | bytes | str | Path) -> str:
        """The text in one image, whitespace collapsed ('' when there is none)."""
        png = _png(_open(image), self.min_side)
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        command = [self.path, "stdin", "stdout", "-l", self.lang, "--psm", str(self.psm)]
        try:
            out = subprocess.run(command, input=png, capture_output=True, timeout=self.timeout_s, env=env)
        except subprocess.TimeoutExpired as exc:
            raise OCRError(f"tesseract took over {self.timeout_s:g} s on one image; raise timeout_s") from exc
        if out.returncode != 0:
            detail = out.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise OCRError(f"tesseract failed (exit {out.returncode}): {detail[0]}")
        return " ".join(out.stdout.decode(errors="replace").split())

    def read_many(
        self,
        images: Sequence[Image.Image | bytes | str | Path],
        workers: int | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> list[str | None]:
        """The text of each image, in order; None where Tesseract failed on it (one bad image does not
        stop the rest). A missing binary raises MissingDependencyError before any work."""
        self.path  # noqa: B018 - fail early, once, with the install hint
        workers = workers or min(4, os.cpu_count() or 1)

        def one(image) -> str | None:
            try:
                return self.read(image)
            except (OCRError, OSError, ValueError):
                return None
            finally:
                if on_done is not None:
                    on_done()

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, images))


def _open(image: Image.Image | bytes | str | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, bytes):
        return Image.open(io.BytesIO(image))
    return Image.open(image)


def _png(image: Image.Image, min_side: int) -> bytes:
    """PNG bytes of the image on white, enlarged (whole factor, bicubic) when its short side is small."""
    rgb = to_rgb(image)
    factor = -(-min_side // max(1, min(rgb.size)))
    if factor > 1:
        rgb = rgb.resize((rgb.width * factor, rgb.height * factor), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()
