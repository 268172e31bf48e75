"""The accuracy gate of `vlmops export`: does the exported model classify as well as its source?

On a labelled split it measures the cosine between the source's and the export's image vectors, and
zero-shot top-1 of both (each with its own text tower). The gate fails when top-1 drops by more than
`max_drop` (a fraction: 0.01 = 1 percentage point).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from PIL import Image

from vlmops.errors import DataError
from vlmops.evaluate.task import EvalTask
from vlmops.evaluate.zeroshot import class_embeddings, zero_shot
from vlmops.models.base import VLM, batched

TOLERANCE = 1e-9  # float noise in `reference - export` must not fail a gate sitting exactly at the limit


@dataclass(frozen=True)
class GateResult:
    """Image-vector agreement and zero-shot top-1 of a source model and its export on one split."""

    split: str | None
    n: int
    n_classes: int
    mean_cosine: float
    min_cosine: float
    reference_top1: float
    export_top1: float
    max_drop: float

    @property
    def drop(self) -> float:
        """Top-1 lost by the export (a fraction; negative when it gained)."""
        return self.reference_top1 - self.export_top1

    @property
    def passed(self) -> bool:
        """Whether the drop is within `max_drop`."""
        return self.drop <= self.max_drop + TOLERANCE

    def to_dict(self) -> dict:
        """JSON-ready, with `drop` and `passed`."""
        return {**asdict(self), "drop": self.drop, "passed": self.passed}


def compare(
    reference_images: np.ndarray,
    export_images: np.ndarray,
    reference_classes: np.ndarray,
    export_classes: np.ndarray,
    classes: Sequence[str],
    labels: Sequence[str],
    max_drop: float,
    split: str | None = None,
) -> GateResult:
    """The gate from precomputed unit vectors: image rows align with `labels`, class rows with `classes`."""
    if reference_images.shape != export_images.shape:
        raise ValueError(f"image vectors differ in shape: {reference_images.shape} vs {export_images.shape}")
    cosine = (reference_images * export_images).sum(axis=1)
    ref = zero_shot(reference_images, reference_classes, list(classes), list(labels))
    exp = zero_shot(export_images, export_classes, list(classes), list(labels))
    return GateResult(
        split=split,
        n=len(labels),
        n_classes=len(classes),
        mean_cosine=float(cosine.mean()),
        min_cosine=float(cosine.min()),
        reference_top1=ref.top1,
        export_top1=exp.top1,
        max_drop=max_drop,
    )


def run_gate(
    reference: VLM,
    exported: VLM,
    task: EvalTask,
    max_drop: float,
    images: Sequence[Image.Image] | None = None,
    progress: bool = False,
) -> GateResult:
    """Embed `task`'s images and class prompts with both models and compare them."""
    from vlmops.data.images import load_image

    images = list(images) if images is not None else [load_image(p) for p in task.frame["image"]]
    vectors = [embed_with_progress(m, images, f"gate: {_label(m)}", progress) for m in (reference, exported)]
    classes = [class_embeddings(m, task.class_names, task.templates) for m in (reference, exported)]
    return compare(*vectors, *classes, task.classes, task.labels, max_drop, task.split)


def embed_with_progress(
    model: VLM, images: Sequence[Image.Image], what: str, progress: bool, batch_size: int = 64
) -> np.ndarray:
    """`model.embed_images` in batches under a rich progress bar labelled `what`."""
    from vlmops.progress import progress_bar

    chunks = [np.zeros((0, model.info.dim), dtype=np.float32)]
    with progress_bar(progress) as bar:
        task = bar.add_task(what, total=len(images))
        for batch in batched(list(images), batch_size):
            chunks.append(model.embed_images(batch))
            bar.advance(task, len(batch))
    return np.concatenate(chunks)


def sample_images(frame: pd.DataFrame, split: str, n: int, seed: int = 0) -> list[Image.Image]:
    """`n` images drawn without replacement (seeded) from `split` of a manifest ("all": every row)."""
    from vlmops.data.images import load_image

    if split == "all":
        rows = frame
    else:
        rows = frame[frame["split"] == split] if "split" in frame.columns else frame.iloc[:0]
    if rows.empty:
        splits = sorted(frame["split"].dropna().unique()) if "split" in frame.columns else []
        raise DataError(
            f"no images in split {split!r} for calibration (splits: {', '.join(splits) or 'none'}); "
            "pass --calibration-split with one of them, or --calibration-split all"
        )
    chosen = rows.sample(min(n, len(rows)), random_state=seed)
    return [load_image(p) for p in chosen["image"]]


def _label(model: VLM) -> str:
    return getattr(model, "runtime", None) or model.info.version
