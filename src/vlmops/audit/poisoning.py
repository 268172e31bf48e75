"""Backdoor and data-poisoning screens: spectral signatures, activation clustering, repeated patches.

* Spectral signatures (Tran, Li & Madry 2018): within a label, poisoned items share a direction that
  dominates the centred embeddings' top singular vector; items far out along it are suspects.
* Activation clustering (Chen et al. 2018): within a label, 2-means on a <= 10-d PCA projection splits
  off a poisoned sub-population as a small, well separated cluster (the paper's "relative size" and
  "silhouette" criteria); our cheap stand-in for its exclusionary reclassification asks whether the
  small cluster's members sit closer to another label's centroid than to their own.
* Repeated patches: a trigger stamped onto images shows up as one small pixel pattern repeated across
  many images of one label and (almost) nowhere else. The finder lives in `vlmops.audit.patches`.

Findings come only from a test that rejects "no backdoor" at a controlled false-discovery rate
(`test_patch_groups`, Benjamini-Hochberg over the compact patch groups): small clean data shares plenty of
compact artwork (eyes, rims) within a label, and the first two screens flag vendor styles and label
confusion on clean emoji, with no null distribution to calibrate them against; their hits stay in the
details. `bench/audit_clean.py` counts the findings on clean data (see bench/RESULTS.md). A clean-label
trigger (stamped on images that already look like their label) does not move the test and is not reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from vlmops.audit.findings import CheckResult, Finding
from vlmops.audit.patches import PatchHashes, find_repeated_patches
from vlmops.audit.stats import MAD_TO_SIGMA, robust_z
from vlmops.errors import DataError

MAX_LISTED = 20


def _label_groups(labels: Sequence, min_per_label: int) -> list[tuple[str, np.ndarray]]:
    """(label, row indices) for every label with at least `min_per_label` rows; missing labels skipped."""
    series = pd.Series([None if v is None or v != v else str(v) for v in labels], dtype=object)
    groups = series.dropna().groupby(series.dropna()).indices
    return [(str(k), np.asarray(v)) for k, v in sorted(groups.items()) if len(v) >= min_per_label]


def spectral_signatures(
    embeddings: np.ndarray,
    labels: Sequence,
    epsilon: float = 0.05,
    z_threshold: float = 3.5,
    min_per_label: int = 20,
) -> list[dict]:
    """Items whose squared projection on their label's top singular vector is an outlier.

    The SVD runs on mean-centred embeddings (as in the paper); scores are squared distances from the
    median projection, so a poisoned cluster cannot drag the origin. An item is flagged when its robust
    |z| exceeds `z_threshold` and it is among the top ceil(1.5 epsilon n) scores of its label.
    """
    from threadpoolctl import threadpool_limits

    x = np.asarray(embeddings, dtype=np.float64)
    out = []
    for label, rows in _label_groups(labels, min_per_label):
        centred = x[rows] - x[rows].mean(axis=0)
        with threadpool_limits(1):  # many small SVDs: thread start-up costs more than it saves
            proj = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
        mad = float(np.median(np.abs(proj - np.median(proj))))
        score = (proj - np.median(proj)) ** 2
        threshold = (z_threshold * mad / MAD_TO_SIGMA) ** 2
        cap = math.ceil(1.5 * epsilon * len(rows))
        top = np.argsort(-score, kind="stable")[:cap]
        with np.errstate(invalid="ignore"):  # robust_z warns (harmlessly) when MAD is 0
            z = np.abs(robust_z(proj))
        for i in top[z[top] > z_threshold]:
            out.append(
                {"row": int(rows[i]), "label": label, "score": float(score[i]), "threshold": threshold}
            )
    return out


def activation_clusters(
    embeddings: np.ndarray,
    labels: Sequence,
    min_per_label: int = 20,
    max_fraction: float = 0.35,
    min_silhouette: float = 0.10,
    seed: int = 0,
) -> list[dict]:
    """Members of a small, well separated 2-means cluster of a label that lie nearer another label."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    x = np.asarray(embeddings, dtype=np.float64)
    names = [None if v is None or v != v else str(v) for v in labels]
    all_groups = _label_groups(names, 1)
    centroids = np.stack([x[rows].mean(axis=0) for _, rows in all_groups])
    position = {label: i for i, (label, _) in enumerate(all_groups)}
    sq_norms = (centroids**2).sum(axis=1)
    out = []
    for label, rows in _label_groups(names, min_per_label):
        with threadpool_limits(1):  # many small fits: thread start-up costs more than it saves (10x)
            z = PCA(min(10, len(rows) - 1, x.shape[1]), random_state=seed).fit_transform(x[rows])
            assign = KMeans(2, n_init=10, random_state=seed).fit_predict(z)
        small = int(np.argmin(np.bincount(assign, minlength=2)))
        members = rows[assign == small]
        if len(members) < 3 or len(members) / len(rows) >= max_fraction:
            continue
        sil = float(silhouette_score(z, assign, sample_size=min(len(rows), 2000), random_state=seed))
        dist = sq_norms[None, :] - 2 * x[members] @ centroids.T  # squared distance minus |x|^2
        own = dist[:, position[label]].copy()
        dist[:, position[label]] = np.inf
        nearest = dist.argmin(axis=1)
        closer = dist[np.arange(len(members)), nearest] < own
        if sil < min_silhouette or closer.mean() < 0.5:
            continue
        for row, near in zip(members[closer], nearest[closer], strict=True):
            out.append(
                {
                    "row": int(row),
                    "label": label,
                    "cluster_size": len(members),
                    "cluster_fraction": len(members) / len(rows),
                    "silhouette": sil,
                    "nearer_label": all_groups[near][0],
                }
            )
    return out


def _patch_findings(groups: list[dict], ids: np.ndarray) -> list[Finding]:
    """One repeated_patch finding per carrier image of each group."""
    out = []
    for number, group in enumerate(groups):
        carriers = [str(ids[i]) for i in group["carriers"]]
        elsewhere = [str(ids[i]) for i in group["elsewhere"]]
        for image, (y, x, h, w) in group["carriers"].items():
            others = [c for c in carriers if c != ids[image]]
            out.append(
                Finding(
                    record_id=str(ids[image]),
                    check="poisoning",
                    kind="repeated_patch",
                    severity="warning",
                    message=f"shares a {group['size']}x{group['size']} pixel patch at (x={x}, y={y}) with "
                    f"{len(others)} other images labelled {group['label']!r} and {len(elsewhere)} elsewhere",
                    evidence={
                        "label": group["label"],
                        "group": number,
                        "patch_size": group["size"],
                        "location": {"x": x, "y": y, "width": w, "height": h},
                        "n_windows": group["n_windows"],
                        "n_carriers": len(carriers),
                        "carriers": others[:MAX_LISTED],
                        "n_elsewhere": len(elsewhere),
                        "elsewhere": elsewhere[:MAX_LISTED],
                        "doubted_carriers": group["doubted_carriers"],
                        "p_value": group["p_value"],
                        "q_value": group["q_value"],
                    },
                )
            )
    return out


def content_doubts_label(embeddings: np.ndarray, labels: Sequence) -> np.ndarray:
    """Per record: an out-of-sample k-NN on the embeddings reads the image as another label (False where
    the label is missing)."""
    from vlmops.audit.labels import out_of_sample_probs

    names = [None if v is None or v != v else str(v) for v in labels]
    known = np.flatnonzero([v is not None for v in names])
    out = np.zeros(len(names), dtype=bool)
    if len(known) < 2:
        return out
    probs, classes = out_of_sample_probs(np.asarray(embeddings)[known], [names[i] for i in known])
    out[known] = classes[probs.argmax(axis=1)] != np.asarray([names[i] for i in known], dtype=object)
    return out


def test_patch_groups(groups: list[dict], labels: Sequence, doubted: np.ndarray, fdr: float) -> list[dict]:
    """Each group with its p-value under "no backdoor"; `rejected` where Benjamini-Hochberg at `fdr` rejects.

    Without a backdoor a patch shared by images of one label is artwork, and its carriers are a sample of
    the label's images: the share whose content a k-NN reads as another label is the label's own rate r
    (estimated from its other images, add-one smoothed). A dirty-label trigger (BadNets: the patch on
    other labels' images, relabelled) makes that share large. p = P(Binomial(k, r) >= c) for c doubted
    carriers of k.
    """
    from scipy.stats import binom, false_discovery_control

    names = np.asarray([None if v is None or v != v else str(v) for v in labels], dtype=object)
    for group in groups:
        carriers = np.fromiter(group["carriers"], dtype=np.int64)
        others = np.setdiff1d(np.flatnonzero(names == group["label"]), carriers)
        rate = (doubted[others].sum() + 1) / (len(others) + 2)
        c, k = int(doubted[carriers].sum()), len(carriers)
        group |= {
            "doubted_carriers": c,
            "label_doubt_rate": float(rate),
            "p_value": float(binom.sf(c - 1, k, rate)),
        }
    if groups:
        adjusted = false_discovery_control([g["p_value"] for g in groups])
        for group, q in zip(groups, adjusted, strict=True):
            group |= {"q_value": float(q), "rejected": bool(q <= fdr)}
    return groups


def poisoning_check(
    frame: pd.DataFrame,
    embeddings: np.ndarray | None,
    labels: Sequence | None = None,
    progress: bool = True,
    epsilon: float = 0.05,
    z_threshold: float = 3.5,
    min_per_label: int = 20,
    patch_size: int = 6,
    patches: bool = True,
    max_patch_groups: int = 50,
    seed: int = 0,
    fdr: float = 0.05,
    patch_hashes: PatchHashes | None = None,
) -> CheckResult:
    """Backdoor suspects: carriers of repeated-patch groups whose test rejects "no backdoor" at `fdr`.

    Spectral signatures and activation clusters are screens without a calibrated null (on clean emoji
    they flag vendor styles): their hits are listed in details, not reported as findings.
    `patch_hashes` (the frame's images hashed by a `PatchHasher`, e.g. in the audit's shared image scan)
    saves reading the images again.
    """
    labels = list(frame["label"] if labels is None else labels)
    ids = frame["id"].astype(str).to_numpy()
    settings = {"epsilon": epsilon, "z_threshold": z_threshold, "min_per_label": min_per_label, "fdr": fdr}
    result = CheckResult(check="poisoning", details=settings)
    spectral, clusters = [], []
    if embeddings is not None:
        if len(embeddings) != len(frame):
            raise DataError(f"{len(embeddings)} embeddings for {len(frame)} records; embed every record")
        spectral = spectral_signatures(embeddings, labels, epsilon, z_threshold, min_per_label)
        clusters = activation_clusters(embeddings, labels, min_per_label, seed=seed)
        result.details["labels_checked"] = len(_label_groups(labels, min_per_label))
        result.details["screens"] = {
            "spectral_outliers": [str(ids[h["row"]]) for h in spectral][:MAX_LISTED],
            "small_cluster_members": [str(ids[h["row"]]) for h in clusters][:MAX_LISTED],
        }
    else:
        result.notes.append(
            "no embeddings: spectral signatures, activation clustering and the patch test skipped"
        )
    rejected: list[dict] = []
    if patches:
        start = time.perf_counter()
        images, hashed = frame["image"].tolist(), patch_hashes
        groups = find_repeated_patches(images, labels, size=patch_size, progress=progress, hashed=hashed)
        compact = [g for g in groups if g["compact"]]
        result.details |= {
            "patch_size": patch_size,
            "patch_seconds": round(time.perf_counter() - start, 2),
            "shared_artwork_groups": len(groups) - len(compact),
            "patch_candidates": len(compact),
        }
        if embeddings is not None:
            test_patch_groups(compact, labels, content_doubts_label(embeddings, labels), fdr)
            rejected = [g for g in compact if g["rejected"]]
            result.details["patch_tests"] = [
                {k: g[k] for k in ("label", "doubted_carriers", "label_doubt_rate", "p_value", "q_value")}
                | {"carriers": len(g["carriers"])}
                for g in compact[:MAX_LISTED]
            ]
        elif compact:
            result.notes.append(
                f"{len(compact)} compact patch groups not tested (no embeddings): no findings"
            )
        if len(rejected) > max_patch_groups:
            result.notes.append(f"{len(rejected) - max_patch_groups} more patch groups not listed")
    result.findings = _patch_findings(rejected[:max_patch_groups], ids)
    result.metrics = {
        "backdoor_suspects": len({f.record_id for f in result.findings}),
        "patch_groups": len(rejected),
        "spectral_outliers": len(spectral),
        "small_cluster_members": len(clusters),
    }
    return result
