"""Text written inside the kept chat images, and the prompt-injection attempts it carries.

An attacker who cannot type "ignore all previous instructions" into the prompt can draw it into the
picture: a vision model reads it there. The server's kept images (`vlmops serve --keep-images`) are read
with OCR (`models.ocr.TesseractOCR`) and the text goes through the same `text_patterns.INJECTION_PATTERNS`
as prompts. Each image is read once per OCR engine and settings: its text is kept in the store's cache
(the generations table, keyed by the engine's version string and the image's sha256).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from vlmops.models.ocr import TesseractOCR
from vlmops.monitor.text_patterns import injection_matches
from vlmops.progress import progress_bar

BAR_FROM = 20  # images left to read before a progress bar shows (about 0.1-0.3 s each)


def kept_paths(shas: Sequence[str], root: str | Path) -> dict[str, Path]:
    """sha256 -> archived file, for the hashes the archive at `root` holds."""
    root = Path(root).expanduser()
    paths = {sha: root / sha[:2] / sha for sha in dict.fromkeys(shas) if sha}
    return {sha: path for sha, path in paths.items() if path.is_file()}


def image_texts(
    shas: Sequence[str],
    root: str | Path,
    ocr: TesseractOCR | None = None,
    cache=None,
    progress: bool = False,
) -> dict[str, str | None]:
    """sha256 -> the text OCR reads in that kept image (None where it failed), for the kept ones among
    `shas`; through `cache` (the store's EmbeddingCache) when given, so a later pass reads nothing twice."""
    ocr = ocr or TesseractOCR()
    paths = kept_paths(shas, root)
    found: dict[str, str | None] = {}
    if cache is not None and paths:
        for sha, value in cache.get_generations(ocr.version, list(paths)).items():
            found[sha] = json.loads(value)["text"]
    todo = [sha for sha in paths if sha not in found]
    if todo:
        with progress_bar(progress and len(todo) >= BAR_FROM) as bar:
            task = bar.add_task("reading text in kept images (OCR)", total=len(todo))
            texts = ocr.read_many([paths[s] for s in todo], on_done=lambda: bar.advance(task))
        found.update(zip(todo, texts, strict=True))
        if cache is not None:
            done = {s: json.dumps({"text": t}) for s, t in zip(todo, texts, strict=True) if t is not None}
            cache.put_generations(ocr.version, done)
    return found


def exchange_injections(
    image_lists: Sequence[Sequence[str]], texts: dict[str, str | None]
) -> list[list[str]]:
    """Per exchange (its list of image hashes): the injection patterns found in its images' text."""
    return [injection_matches([texts.get(s) or "" for s in shas]) for shas in image_lists]
