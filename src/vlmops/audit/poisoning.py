"""Backdoor and data-poisoning screens: spectral signatures, activation clustering, repeated patches.

* Spectral signatures (Tran, Li & Madry 2018): within a label, poisoned items share a direction that
  dominates the centred embeddings' top singular vector; items far out along it are suspects.
* Activation clustering (Chen et al. 2018): within a label, 2-means on a <= 10-d PCA projection splits
  off a poisoned sub-population as a small, well separated cluster (the paper's "relative size" and
  "silhouette" criteria); our cheap stand-in for its exclusionary reclassification asks whether the
  small cluster's members sit closer to another label's centroid than to their own.
* Repeated patches: a trigger stamped onto images shows up as one small pixel pattern repeated across
  many images of one label and (almost) nowhere else. The finder lives in `vlmops.audit.patches`; this
  module turns its compact groups into findings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from vlmops.audit.findings import CheckResult, Finding
from vlmops.audit.patches import find_repeated_patches
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
                    },
                )
            )
    return out


def _embedding_findings(spectral: list[dict], clusters: list[dict], ids: np.ndarray) -> list[Finding]:
    out = []
    for hit in spectral:
        out.append(
            Finding(
                record_id=str(ids[hit["row"]]),
                check="poisoning",
                kind="spectral_outlier",
                severity="warning",
                message=f"outlier along the top spectral direction of label {hit['label']!r} "
                f"(score {hit['score']:.3g} > threshold {hit['threshold']:.3g})",
                evidence={k: hit[k] for k in ("label", "score", "threshold")},
            )
        )
    for hit in clusters:
        out.append(
            Finding(
                record_id=str(ids[hit["row"]]),
                check="poisoning",
                kind="small_cluster",
                severity="warning",
                message=f"in a small cluster ({hit['cluster_size']} items, {hit['cluster_fraction']:.0%}) of "
                f"label {hit['label']!r} that lies nearer label {hit['nearer_label']!r}",
                evidence={k: v for k, v in hit.items() if k != "row"},
            )
        )
    return out


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
) -> CheckResult:
    """Backdoor suspects: spectral signatures and activation clusters per label, and repeated patches."""
    labels = list(frame["label"] if labels is None else labels)
    ids = frame["id"].astype(str).to_numpy()
    settings = {"epsilon": epsilon, "z_threshold": z_threshold, "min_per_label": min_per_label}
    result = CheckResult(check="poisoning", details=settings)
    spectral, clusters = [], []
    if embeddings is not None:
        if len(embeddings) != len(frame):
            raise DataError(f"{len(embeddings)} embeddings for {len(frame)} records; embed every record")
        spectral = spectral_signatures(embeddings, labels, epsilon, z_threshold, min_per_label)
        clusters = activation_clusters(embeddings, labels, min_per_label, seed=seed)
        result.details["labels_checked"] = len(_label_groups(labels, min_per_label))
    else:
        result.notes.append("no embeddings: spectral signatures and activation clustering skipped")
    compact: list[dict] = []
    if patches:
        start = time.perf_counter()
        groups = find_repeated_patches(frame["image"].tolist(), labels, size=patch_size, progress=progress)
        compact = [g for g in groups if g["compact"]]
        result.details |= {
            "patch_size": patch_size,
            "patch_seconds": round(time.perf_counter() - start, 2),
            "shared_artwork_groups": len(groups) - len(compact),
        }
        if len(compact) > max_patch_groups:
            result.notes.append(f"{len(compact) - max_patch_groups} more patch groups not listed")
    result.findings = _embedding_findings(spectral, clusters, ids) + _patch_findings(
        compact[:max_patch_groups], ids
    )
    suspects = {h["row"] for h in spectral + clusters} | {i for g in compact for i in g["carriers"]}
    result.metrics = {
        "backdoor_suspects": len(suspects),
        "patch_groups": len(compact),
        "spectral_outliers": len(spectral),
        "small_cluster_members": len(clusters),
    }
    return result
