"""Zero-shot top-1 on new-vendor (facebook, openmoji) emoji test images: the public API on PNGs opened
with `Image.open` (RGBA, P with transparency) against the eval path (`load_image` + the store).

Both go through the model's own preprocessing (`vlmops.models.preprocess.to_rgb`), so they must agree.
Run: PYTHONPATH=src python bench/library_vs_eval.py
"""

from __future__ import annotations

import tempfile

import numpy as np
from PIL import Image

from vlmops.data.emoji import load_emoji_manifest
from vlmops.evaluate.context import EvalContext
from vlmops.evaluate.task import build_task
from vlmops.models import load_model
from vlmops.store.cache import open_cache

m = load_emoji_manifest()
task = build_task(m[m.vendor.isin(["facebook", "openmoji"])], "emoji", "test")
model = load_model("builtin:emoji-lit")
with tempfile.TemporaryDirectory() as tmp, open_cache(f"{tmp}/s.sqlite") as cache:
    ctx = EvalContext(model, task, cache, progress=False)
    evaluated = ctx.image_emb
    classes = ctx.class_emb
paths = list(task.frame["image"])
library = np.concatenate(
    [model.embed_images([Image.open(p) for p in paths[i : i + 64]]) for i in range(0, len(paths), 64)]
)


def top1(emb: np.ndarray) -> float:
    """Zero-shot top-1 at the concept tier."""
    return float(((emb @ classes.T).argmax(1) == task.targets).mean())


print(
    f"n={len(paths)} eval-path top1={top1(evaluated):.4f} library(Image.open) top1={top1(library):.4f} "
    f"max|diff|={np.abs(library - evaluated).max():.2e}"
)
