"""One pass over an audit's image files: each decoded once and handed to every check that reads pixels.

`scan_images` decodes the files in order (`vlmops.audit.decode`) and gives each `Decoded` to its
consumers, one per check that needs the image (`consumers_for` picks them from the checks asked for):

==============  ==================================================  ====================================
consumer        result                                              fed to
==============  ==================================================  ====================================
``readable``    bool per record: the image decodes                  `AuditInputs.readable` (every check)
``quality``     the `image_stats` table                             `quality_check(stats=...)`
``duplicates``  `signatures` (pHashes and colour signatures)        `duplicates_check(hashes=...)`
``pii``         `exif_pii` per record                               `pii_check(image_meta=...)`
``poisoning``   `PatchHashes` of the labelled readable images       `poisoning_check(patch_hashes=...)`
==============  ==================================================  ====================================

Memory stays bounded: a decoded image is dropped once its consumers have seen it; what is kept is
each consumer's small per-image result (and the patch hasher's pending batch per image shape; its
window hashes go to temporary files, removed when the scan ends or fails).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from vlmops.audit.decode import Decoded, decode
from vlmops.audit.duplicates import SIGNATURE, signature
from vlmops.audit.patches import PatchHasher, PatchHashes
from vlmops.audit.pii import exif_pii
from vlmops.audit.quality import quality_row, stats_frame

PIXEL_CHECKS = ("quality", "duplicates", "poisoning")  # checks that read every image's pixels
EMBEDDING_CHECKS = ("duplicates", "labels", "alignment", "poisoning")  # need `readable` with a model


class Consumer(Protocol):
    """Takes every decoded image of the scan in order, then gives one result."""

    def add(self, index: int, decoded: Decoded) -> None:
        """See record `index`'s decoded image (do not modify it)."""

    def result(self) -> Any:
        """What the consumer computed over all records."""


class Readable:
    """Whether each record's image decodes."""

    def __init__(self, n: int) -> None:
        self.flags = np.zeros(n, dtype=bool)

    def add(self, index: int, decoded: Decoded) -> None:
        self.flags[index] = decoded.readable

    def result(self) -> np.ndarray:
        return self.flags


class QualityStats:
    """The quality check's `image_stats` table."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, index: int, decoded: Decoded) -> None:
        self.rows.append(quality_row(decoded))

    def result(self) -> pd.DataFrame:
        return stats_frame(self.rows)


class Signatures:
    """The duplicates check's `signatures` (all zero, ``ok`` False, where the image does not decode)."""

    def __init__(self, n: int) -> None:
        self.out = np.zeros(n, SIGNATURE)

    def add(self, index: int, decoded: Decoded) -> None:
        if decoded.readable:
            self.out[index] = signature(decoded.rgb)

    def result(self) -> np.ndarray:
        return self.out


class MetadataPii:
    """`exif_pii` per record, from the opened image (from the file's header where it does not decode)."""

    def __init__(self) -> None:
        self.meta: list[dict] = []

    def add(self, index: int, decoded: Decoded) -> None:
        self.meta.append(exif_pii(decoded.image if decoded.image is not None else decoded.path))

    def result(self) -> list[dict]:
        return self.meta


class Patches:
    """The repeated-patch hasher, fed the readable images of the records in `feed`, in record order."""

    def __init__(self, feed: np.ndarray, size: int = 6, quant_bits: int = 2) -> None:
        self.feed, self.hasher = np.asarray(feed, dtype=bool), PatchHasher(size, quant_bits)

    def add(self, index: int, decoded: Decoded) -> None:
        if decoded.readable and self.feed[index]:
            self.hasher.add(decoded.rgb)

    def result(self) -> PatchHashes:
        return self.hasher.finish()

    def close(self) -> None:
        """Remove the hasher's temporary files (the scan failed)."""
        self.hasher.close()


def consumers_for(checks: Collection[str], frame: pd.DataFrame, has_model: bool) -> dict[str, Consumer]:
    """The consumers `checks` need ({} when none reads pixels, so nothing is decoded).

    A scan runs for quality, duplicates or poisoning, or for an embedding check with a model (which
    needs `readable`); PII's metadata then rides along (on its own it reads only headers, except PNG's).
    """
    wanted = set(checks)
    if not (wanted & set(PIXEL_CHECKS) or (has_model and wanted & set(EMBEDDING_CHECKS))):
        return {}
    n = len(frame)
    makers: dict[str, Callable[[], Consumer]] = {
        "quality": QualityStats,
        "duplicates": lambda: Signatures(n),
        "pii": MetadataPii,
        "poisoning": lambda: Patches(frame["label"].notna().to_numpy()),
    }
    return {"readable": Readable(n)} | {name: make() for name, make in makers.items() if name in wanted}


def scan_images(sources: Sequence, consumers: dict[str, Consumer], progress: bool = True) -> dict[str, Any]:
    """Decode each image once, in order, and hand it to every consumer; their results by name.

    If anything fails, consumers with a ``close`` method (the patch hasher's temporary files) are closed.
    """
    from vlmops.progress import progress_bar

    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(f"reading images ({', '.join(consumers)})", total=len(sources))
            for index, source in enumerate(sources):
                decoded = decode(str(source))
                for consumer in consumers.values():
                    consumer.add(index, decoded)
                bar.advance(task)
        return {name: consumer.result() for name, consumer in consumers.items()}
    except BaseException:
        for consumer in consumers.values():
            close = getattr(consumer, "close", None)
            if close is not None:
                close()
        raise
