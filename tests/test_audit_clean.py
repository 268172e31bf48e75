"""The audit on small clean data: no false backdoor, exchanged-caption or duplicate findings, while a
planted backdoor is still found (the clean subsets of `bench/audit_clean.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import audit_clean
from vlmops.audit.run import AuditInputs, run_audit
from vlmops.data.emoji import manifest_path
from vlmops.store.embed import content_sha256

pytestmark = [
    pytest.mark.emoji,
    pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first"),
]

# the two pairs of distinct smileys that were reported as near duplicates (and as leakage)
LOOK_ALIKES = (("google:1F47F", "google:1F608"), ("google:1F617", "google:1F619"))


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    from vlmops.data.emoji import load_emoji_manifest

    return audit_clean.clean_emoji_pool(load_emoji_manifest(), "google")


@pytest.fixture(scope="module")
def model():
    from vlmops.models import load_model

    return load_model("builtin:emoji-lit")


def audit(frame: pd.DataFrame, model, store: Path, checks: list[str]):
    from vlmops.store.cache import open_cache

    with open_cache(str(store)) as cache:
        inputs = AuditInputs(
            frame, [content_sha256(p) for p in frame["image"]], model, cache, False, "an emoji of {}"
        )
        return run_audit(inputs, checks, {}, [], [])


def small_sample(pool: pd.DataFrame) -> pd.DataFrame:
    """157 records: the look-alike smileys' subcategories (17 records) and ten of each of 14 others."""
    rng = np.random.default_rng(0)
    must = {i for pair in LOOK_ALIKES for i in pair}
    labels = ["face-negative", "face-affection"]
    counts = pool["label"].value_counts()
    labels += list(rng.permutation(sorted(set(counts[counts >= 10].index) - set(labels)))[:14])
    parts = []
    for label in labels:
        members = pool[pool["label"] == label]
        first = members[members["id"].isin(must)]
        rest = members[~members["id"].isin(must)].sample(frac=1, random_state=0)
        parts.append(pd.concat([first, rest]).head(10))
    return pd.concat(parts, ignore_index=True)


def test_a_small_clean_emoji_folder_has_no_backdoor_swap_or_duplicate_findings(pool, model, tmp_path) -> None:
    sample = small_sample(pool)
    assert set(sample["id"]) >= {i for pair in LOOK_ALIKES for i in pair} and len(sample) == 157
    folder = audit_clean.as_folder(sample, tmp_path / "folder")
    report = audit(folder, model, tmp_path / "s.sqlite", ["duplicates", "alignment", "poisoning"])
    kinds = [(f.record_id, f.kind) for f in report.findings]
    assert not [k for k in kinds if k[1] in ("near_duplicate", "swapped_caption", "repeated_patch")], kinds


def test_distinct_look_alikes_in_train_and_val_are_no_leakage(pool, model, tmp_path) -> None:
    sample = small_sample(pool)
    manifest = audit_clean.as_manifest(sample, np.random.default_rng(0))
    for a, b in LOOK_ALIKES:
        manifest.loc[manifest["id"] == a, "split"] = "train"
        manifest.loc[manifest["id"] == b, "split"] = "val"
    report = audit(manifest, model, tmp_path / "s.sqlite", ["duplicates", "leakage"])
    assert report.checks["leakage"].findings == [] and report.checks["duplicates"].findings == []


def test_a_planted_backdoor_in_clean_data_is_still_found(pool, model, tmp_path) -> None:
    """BadNets: a 6x6 patch on 12 images of other labels, relabelled to the largest label."""
    rng = np.random.default_rng(1)
    sample = audit_clean.sample_classes(pool, 400, rng)
    frame = audit_clean.as_manifest(sample, rng)
    target = frame["label"].value_counts().index[0]
    patch = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    rows = []
    for j, i in enumerate(rng.choice(np.flatnonzero(frame["label"] != target), 12, replace=False)):
        pixels = np.asarray(Image.open(frame.at[i, "image"]).convert("RGB")).copy()
        pixels[-8:-2, -8:-2] = patch
        Image.fromarray(pixels).save(tmp_path / f"poison{j}.png")
        rows.append({**frame.loc[i].to_dict(), "id": f"poison{j}", "image": str(tmp_path / f"poison{j}.png"),
                     "label": target, "sha256": None})  # fmt: skip
    frame = pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
    report = audit(frame, model, tmp_path / "s.sqlite", ["poisoning"])
    assert {f.record_id for f in report.findings} == {f"poison{j}" for j in range(12)}


def test_one_record_per_concept_gives_no_label_alignment_or_blank_findings(model, tmp_path) -> None:
    """The 600-record Twitter manifest of `bench/audit_clean.py` (emoji names as captions, subcategory
    labels, one record per concept): 39 label issues, 49 caption findings and 7 coloured squares under the
    low-information limit before look-alike evidence and the blank test; 2, 1 and 1 after."""
    from vlmops.data.emoji import load_emoji_manifest

    twitter = audit_clean.clean_emoji_pool(load_emoji_manifest(), "twitter")
    rng = np.random.default_rng([0, 1, 2])  # as `audit_clean.subsets` draws it
    frame = audit_clean.as_manifest(audit_clean.sample_classes(twitter, 600, rng), rng)
    report = audit(frame, model, tmp_path / "s.sqlite", ["quality", "labels", "alignment"])
    assert len(report.checks["labels"].findings) <= 2
    assert len(report.checks["alignment"].findings) <= 1
    blank = [f for f in report.checks["quality"].findings if f.kind == "low_information"]
    assert len(blank) <= 1
