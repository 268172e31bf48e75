"""The built-in model's quality bar on the emoji data: new vendor, unseen concepts, style shift, tones.

All numbers go through the public model protocol with the prompt "an emoji of {name}" on base emoji
(no skin-tone modifier) unless a line says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from vlmops.evaluate.zeroshot import class_embeddings, image_embeddings, zero_shot
from vlmops.models.base import VLM

BARS = {"new_vendor_top1": 0.45, "unseen_concepts_top1": 0.15}


EmbedFn = Callable[[Sequence[str]], np.ndarray]


def quality_report(model: VLM, manifest: pd.DataFrame, embed_paths: EmbedFn | None = None) -> dict:
    """Top-1/top-5 on each quality-bar slice, per-skin-tone concept accuracy, and pass/fail per bar.

    `embed_paths` maps image paths to embeddings (default: the model, uncached).
    """
    embed_paths = embed_paths or (lambda paths: image_embeddings(model, list(paths)))
    base = manifest[manifest["skin_tone"] == "none"]
    candidates = {
        "all": sorted(base["name"].unique()),
        "test": sorted(base.loc[base["split"] == "test", "name"].unique()),
    }
    seen, unseen = base[base["split"] == "train"], base[base["split"] == "test"]
    train_vendors = ["google", "twitter"]
    # (rows, candidate set, column holding the true name)
    slices = {
        "new_vendor_top1": (seen[seen["vendor"] == "facebook"], "all", "name"),
        "unseen_concepts_top1": (unseen[unseen["vendor"].isin(train_vendors)], "test", "name"),
        "openmoji_seen_concepts": (seen[seen["vendor"] == "openmoji"], "all", "name"),
        "openmoji_unseen_concepts": (unseen[unseen["vendor"] == "openmoji"], "test", "name"),
        "train_vendors_seen_concepts": (seen[seen["vendor"].isin(train_vendors)], "all", "name"),
    }
    # Concept recognition per skin tone on the new vendor: does "thumbs up" work for every tone?
    toned = manifest[(manifest["vendor"] == "facebook") & (manifest["split"] == "train")]
    toned = toned[toned["concept_name"].isin(candidates["all"])]
    for tone, group in toned.groupby("skin_tone"):
        slices[f"new_vendor_skin_tone={tone}"] = (group, "all", "concept_name")

    paths = sorted({p for frame, _, _ in slices.values() for p in frame["image"]})
    vectors = dict(zip(paths, embed_paths(paths), strict=True))
    classes = {key: class_embeddings(model, names) for key, names in candidates.items()}
    report: dict = {}
    for key, (frame, candidate_set, column) in slices.items():
        emb = np.stack([vectors[p] for p in frame["image"]]) if len(frame) else np.zeros((0, model.info.dim))
        names = candidates[candidate_set]
        report[key] = zero_shot(emb, classes[candidate_set], names, list(frame[column])).to_dict()
    report["bars"] = {
        key: {"threshold": bar, "value": report[key]["top1"], "passed": report[key]["top1"] >= bar}
        for key, bar in BARS.items()
    }
    return report
