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


class JudgeVectors:
    """The judge's unit vectors of texts and archived images, each distinct input embedded once, through
    the store's embedding cache when one is given (a later pass re-embeds nothing it saw)."""

    def __init__(self, judge, cache=None) -> None:
        self.judge, self.cache = judge, cache

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), d) float64 vectors."""
        unique = sorted(set(texts))
        if self.cache is not None:
            from vlmops.store.embed import embed_texts_cached

            vectors, _ = embed_texts_cached(self.judge, unique, self.cache, progress=False)
        else:
            vectors = self.judge.embed_texts(unique)
        index = {t: i for i, t in enumerate(unique)}
        return np.asarray(vectors, dtype=np.float64)[[index[t] for t in texts]]

    def images(self, shas: Sequence[str], root: str | Path) -> np.ndarray:
        """(len(shas), d) float64 vectors of the archived images with these sha256."""
        root = Path(root).expanduser()
        unique = sorted(set(shas))
        paths = [root / sha[:2] / sha for sha in unique]
        if self.cache is not None:
            from vlmops.store.embed import embed_images_cached

            vectors, _ = embed_images_cached(
                self.judge, paths, self.cache, progress=False, content_keys=unique
            )
        else:
            vectors = np.concatenate(
                [
                    self.judge.embed_images([load_image(p) for p in paths[i : i + 64]])
                    for i in range(0, len(paths), 64)
                ]
            )
        index = {s: i for i, s in enumerate(unique)}
        return np.asarray(vectors, dtype=np.float64)[[index[s] for s in shas]]


def grounding_scores(images: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """Cosine of each (image, answer) pair of unit vectors."""
    return np.sum(images * answers, axis=1)


def object_vectors(vectors: JudgeVectors, vocabulary: Mapping[str, Sequence[str]], template: str):
    """The vocabulary's matcher and the judge's vectors of its objects (read through `template`)."""
    vocab = ObjectVocabulary(vocabulary)
    return vocab, vectors.texts([template.format(o) for o in vocab.objects])


def unsupported_flags(
    vocab: ObjectVocabulary,
    objects: np.ndarray,
    images: np.ndarray,
    answers: Sequence[str],
    top_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per answer: does it mention an object (mask), does it mention an unsupported one (flag); and the
    total of unsupported mentions. `objects`: the judge's vectors of `vocab.objects`."""
    mentions = [vocab.mentions(a) for a in answers]
    estimate = judge_unsupported(images, objects, vocab.objects, mentions, top_fraction)
    has_mention = np.array([bool(m) for m in mentions])
    flagged = np.array([bool(u) for u in estimate.unsupported])
    return has_mention, flagged, sum(len(u) for u in estimate.unsupported)


def data_vocabulary(spec: str) -> dict[str, list[str]] | None:
    """The object vocabulary of labelled data (`resolve_data` spec): every record's tags, as
    `vlmops eval --task caption` uses by default; None when the data has no tags or cannot be read."""
    from vlmops.data.manifest import resolve_data
    from vlmops.errors import VlmopsError
    from vlmops.evaluate.text_metrics import caption_tokens

    try:
        frame = resolve_data(spec)
    except (VlmopsError, OSError):
        return None
    if "tags" not in frame.columns:
        return None
    names = set()
    for tags in frame["tags"]:
        if isinstance(tags, str):
            tags = tags.split("|")
        for tag in tags if tags is not None and not isinstance(tags, float) else []:
            names.add(caption_tokens(str(tag)))
    names.discard("")
    return {name: [] for name in sorted(names)} or None
