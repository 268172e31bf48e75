"""Poisoning screens: spectral signatures, activation clustering and the repeated-patch finder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from vlmops.audit.patches import _pixel_codes, find_repeated_patches, window_hashes
from vlmops.audit.poisoning import activation_clusters, poisoning_check, spectral_signatures


def planted(n_labels: int = 4, per: int = 300, dim: int = 32, fraction: float = 0.03, seed: int = 0):
    """Gaussian blobs; `fraction` of label "l1" moved 70 % of the way towards label "l0"'s centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_labels, dim))
    truth = np.repeat(np.arange(n_labels), per)
    x = centres[truth] + 0.35 * rng.normal(size=(len(truth), dim))
    poisoned = rng.choice(np.flatnonzero(truth == 1), int(fraction * per), replace=False)
    x[poisoned] += 0.7 * (centres[0] - centres[1])
    return x, np.array([f"l{t}" for t in truth], dtype=object), poisoned


def test_spectral_signatures_flag_a_shifted_subpopulation() -> None:
    x, labels, poisoned = planted()
    hits = spectral_signatures(x, labels, epsilon=0.05)
    rows = {h["row"] for h in hits}
    assert len(rows & set(poisoned)) >= 0.8 * len(poisoned)
    per_label = pd.Series([h["label"] for h in hits]).value_counts()
    assert per_label.max() <= np.ceil(1.5 * 0.05 * 300)  # never more than 1.5 epsilon n per label
    assert all(h["score"] > h["threshold"] for h in hits)


def test_spectral_signatures_are_quiet_on_clean_labels() -> None:
    x, labels, _ = planted(fraction=0.0)
    assert len(spectral_signatures(x, labels)) <= 4


def test_activation_clustering_flags_the_small_cluster_nearer_another_label() -> None:
    x, labels, poisoned = planted()
    hits = activation_clusters(x, labels, seed=0)
    rows = {h["row"] for h in hits}
    assert len(rows & set(poisoned)) >= 0.8 * len(poisoned) and rows <= set(poisoned)
    assert {h["label"] for h in hits} == {"l1"} and {h["nearer_label"] for h in hits} == {"l0"}
    assert all(h["cluster_fraction"] < 0.35 and h["silhouette"] >= 0.1 for h in hits)
    assert activation_clusters(*planted(fraction=0.0)[:2]) == []


def test_a_small_cluster_nearest_its_own_label_is_not_flagged() -> None:
    x, labels, poisoned = planted()
    away = np.random.default_rng(5).normal(size=x.shape[1])
    x[poisoned] = x[labels == "l1"].mean(axis=0) + 3.0 * away / np.linalg.norm(away)  # far, but from no one
    x[poisoned] += 0.05 * np.random.default_rng(6).normal(size=(len(poisoned), x.shape[1]))
    assert activation_clusters(x, labels) == []
    assert {h["row"] for h in spectral_signatures(x, labels)} >= set(poisoned)


def test_labels_below_min_per_label_are_skipped() -> None:
    x, labels, _ = planted(per=15, fraction=0.2)
    assert spectral_signatures(x, labels, min_per_label=20) == []
    assert activation_clusters(x, labels, min_per_label=20) == []


def test_window_hashes_count_distinct_non_uniform_windows() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 3, (20, 24, 3), dtype=np.uint8) * 100
    pixels[:10, :10] = 255  # a uniform block: its inner windows are skipped
    pixels[12:18, 14:20] = pixels[0:6, 14:20]  # the same 6x6 content twice in one image
    codes = _pixel_codes(pixels, 2)
    hashes, which, places = window_hashes(codes[None], 6)
    windows = sliding_window_view(codes, (6, 6)).reshape(-1, 36)
    distinct = np.unique(windows[~(windows == windows[:, :1]).all(axis=1)], axis=0)
    assert len(hashes) == len(distinct) == len(set(hashes.tolist())) and set(which.tolist()) == {0}
    y, x = places[np.argsort(hashes)][
        np.searchsorted(np.sort(hashes), window_hashes(codes[None, 12:18, 14:20], 6)[0][0])
    ]
    assert (y, x) == (0, 14)  # a repeated window is placed at its first (top-left) occurrence


def noise_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def stamp(image: np.ndarray, patch: np.ndarray, y: int, x: int) -> np.ndarray:
    out = image.copy()
    out[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return out


@pytest.fixture
def patch_data(tmp_path: Path) -> tuple[list, list, dict, np.ndarray]:
    """40 noise images per label a/b/c; a 6x6 trigger on 5 images of a; a logo on every image."""
    rng = np.random.default_rng(0)
    trigger = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    logo = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    images, labels, stamped = [], [], {}
    for i in range(120):
        pixels = stamp(noise_image(rng), logo, 24, 24)
        label = "abc"[i // 40]
        if label == "a" and i % 8 == 0:
            y, x = rng.integers(0, 18, 2)
            pixels, stamped[i] = stamp(pixels, trigger, y, x), [int(y), int(x)]
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        images.append(str(path))
        labels.append(label)
    return images, labels, stamped, trigger


def test_patch_finder_finds_a_stamped_trigger_but_not_a_shared_logo(patch_data) -> None:
    images, labels, stamped, _ = patch_data
    groups = find_repeated_patches(images, labels, progress=False)
    assert len(stamped) == 5 and len(groups) == 1
    group = groups[0]
    assert group["label"] == "a" and group["compact"] and group["elsewhere"] == []
    assert {i: box[:2] for i, box in group["carriers"].items()} == stamped
    assert all(box[2:] == [6, 6] for box in group["carriers"].values())


def test_patch_finder_is_quiet_on_clean_images_and_needs_three_carriers(patch_data) -> None:
    images, labels, stamped, trigger = patch_data
    clean = [i for i in range(len(images)) if i not in stamped]
    assert find_repeated_patches([images[i] for i in clean], [labels[i] for i in clean], progress=False) == []
    rng = np.random.default_rng(1)
    two = [Image.fromarray(stamp(noise_image(rng), trigger, 3, 3)) for _ in range(2)]
    pool = two + [Image.fromarray(noise_image(rng)) for _ in range(20)]
    assert find_repeated_patches(pool, ["a"] * len(pool), progress=False) == []
    with pytest.raises(ValueError, match="between 4 and 8"):
        find_repeated_patches(pool, ["a"] * len(pool), size=9, progress=False)


def test_patch_finder_ignores_a_patch_common_outside_the_label() -> None:
    rng = np.random.default_rng(2)
    trigger = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    # 6 carriers in a (of 40), 2 in b: 2 > 10 % of 6, so the patch is not specific to a
    pool = [
        stamp(noise_image(rng), trigger, 4, 4) if i in (0, 1, 2, 3, 4, 5, 40, 41) else noise_image(rng)
        for i in range(80)
    ]
    labels = ["a"] * 40 + ["b"] * 40
    assert find_repeated_patches([Image.fromarray(p) for p in pool], labels, progress=False) == []


def blob_embeddings(labels: list[str], seed: int = 0, dim: int = 16) -> np.ndarray:
    """One tight Gaussian blob per label."""
    rng = np.random.default_rng(seed)
    names = sorted(set(labels))
    centres = {name: rng.normal(size=dim) for name in names}
    return np.stack([centres[v] + 0.3 * rng.normal(size=dim) for v in labels])


def test_poisoning_check_reports_a_dirty_label_trigger_with_its_test(patch_data) -> None:
    images, labels, stamped, _ = patch_data
    # the stamped images of "a" were drawn from "b" and relabelled: their content reads as b
    content = ["b" if i in stamped else v for i, v in enumerate(labels)]
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(120)], "image": images, "label": labels})
    result = poisoning_check(frame, blob_embeddings(content), progress=False)
    assert {f.record_id for f in result.findings} == {f"r{i}" for i in stamped}
    assert {f.kind for f in result.findings} == {"repeated_patch"}
    assert result.metrics["backdoor_suspects"] == 5 and result.metrics["patch_groups"] == 1
    patch = result.findings[0]
    assert patch.evidence["label"] == "a" and patch.evidence["n_carriers"] == 5
    assert patch.evidence["doubted_carriers"] == 5 and patch.evidence["q_value"] <= 0.05
    assert len(patch.evidence["carriers"]) == 4 and patch.evidence["location"]["width"] == 6
    assert result.details["patch_size"] == 6 and "patch_seconds" in result.details


def test_poisoning_check_reports_nothing_the_test_does_not_reject(patch_data) -> None:
    """Shared artwork (a patch on images that look like their label) and the embedding screens' hits
    are no findings: no test rejects "no backdoor"."""
    images, labels, _, _ = patch_data
    x, _, _ = planted(n_labels=3, per=40, fraction=0.1)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(120)], "image": images, "label": labels})
    result = poisoning_check(frame, x, progress=False, epsilon=0.1, min_per_label=20)
    assert result.findings == [] and result.metrics["backdoor_suspects"] == 0
    assert result.metrics["spectral_outliers"] > 0 and result.metrics["small_cluster_members"] > 0
    assert result.details["patch_candidates"] == 1 and result.details["patch_tests"][0]["q_value"] > 0.05
    assert poisoning_check(frame, None, progress=False).findings == []  # untested without embeddings
