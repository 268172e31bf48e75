"""What a judge dual encoder says about logged answers: does each answer match its image?

- grounding score: cosine of the judge's image vector and its vector of the answer (CLIPScore
  without the 2.5 weight), per exchange;
- hallucination estimate (issue 16, `evaluate.hallucination.judge_unsupported`): an object the answer
  mentions is unsupported when the judge ranks it outside the top `top_fraction` of the vocabulary
  for that image; per exchange, whether the answer mentions at least one unsupported object.

The images are the server's kept images (`vlmops serve --keep-images DIR`), found by sha256;
exchanges whose image was not kept are left out (and counted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vlmops.data.images import load_image
from vlmops.evaluate.hallucination import ObjectVocabulary, judge_unsupported
from vlmops.serve.archive import ImageArchive


def kept_images(shas: Sequence[str | None], root: str | Path) -> np.ndarray:
    """Boolean mask: which exchanges' first image is in the archive at `root`."""
    archive = ImageArchive.__new__(ImageArchive)  # read-only: never create the folder
    archive.root = Path(root).expanduser()
    return np.array([bool(s) and archive.has(s) for s in shas], dtype=bool)


def image_vectors(judge, shas: Sequence[str], root: str | Path, batch_size: int = 64) -> np.ndarray:
    """The judge's unit vectors of archived images (each distinct image embedded once), in `shas` order."""
    root = Path(root).expanduser()
    unique = sorted(set(shas))
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(unique), batch_size):
        batch = unique[start : start + batch_size]
        images = [load_image(root / sha[:2] / sha) for sha in batch]
        for sha, vector in zip(batch, judge.embed_images(images), strict=True):
            vectors[sha] = vector
    return np.stack([vectors[s] for s in shas]).astype(np.float64)


def grounding_scores(images: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """Cosine of each (image, answer) pair of unit vectors."""
    return np.sum(images * answers, axis=1)


def unsupported_flags(
    judge,
    images: np.ndarray,
    answers: Sequence[str],
    vocabulary: Mapping[str, Sequence[str]],
    object_template: str = "a photo of {}.",
    top_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per answer: does it mention an object (mask), does it mention an unsupported one (flag); and the
    total of unsupported mentions."""
    vocab = ObjectVocabulary(vocabulary)
    objects = vocab.objects
    object_vectors = judge.embed_texts([object_template.format(o) for o in objects]).astype(np.float64)
    mentions = [vocab.mentions(a) for a in answers]
    estimate = judge_unsupported(images, object_vectors, objects, mentions, top_fraction)
    has_mention = np.array([bool(m) for m in mentions])
    flagged = np.array([bool(u) for u in estimate.unsupported])
    return has_mention, flagged, sum(len(u) for u in estimate.unsupported)
