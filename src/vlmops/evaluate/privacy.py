"""Membership-inference audit: can an attacker tell the model's training pairs from held-out ones?

The attack scores an (image, text) pair by the model's cosine similarity and guesses "member" above a
threshold; its ROC AUC over all thresholds is the leakage measure (0.5 = no leakage, 1.0 = every training
pair is recognisable). This needs to know which pairs the model was trained on, so it runs for models
trained by vlmops, whose model card records the training vendors, split seed and the training rows'
data-set version; for any other model it is skipped with that reason.

Two comparisons: training pairs vs held-out concepts (the val/test splits of the training vendors), and
training pairs vs held-out drawings of training concepts (the hold-out `vlmops train` keeps for
validation), which isolates memorisation of images from knowledge of concepts. CIs come from a bootstrap
that resamples concepts within each group.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from vlmops.data.version import dataset_version
from vlmops.evaluate.task import prompt_name
from vlmops.models.base import VLM

PROMPT = "an emoji of {}"


def roc_auc(member: np.ndarray, non_member: np.ndarray) -> float:
    """AUC = P(score of a random member > score of a random non-member), ties counting one half."""
    if len(member) == 0 or len(non_member) == 0:
        raise ValueError("roc_auc needs at least one member and one non-member score")
    ranks = rankdata(np.concatenate([member, non_member]))
    n1, n0 = len(member), len(non_member)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auc_ci(
    member: np.ndarray,
    non_member: np.ndarray,
    member_clusters: np.ndarray,
    non_member_clusters: np.ndarray,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling whole clusters within each group."""
    rng = np.random.default_rng([seed, 4242])
    m_groups = [np.flatnonzero(member_clusters == c) for c in np.unique(member_clusters)]
    n_groups = [np.flatnonzero(non_member_clusters == c) for c in np.unique(non_member_clusters)]
    stats = np.empty(n_boot)
    for b in range(n_boot):
        mi = np.concatenate([m_groups[i] for i in rng.integers(len(m_groups), size=len(m_groups))])
        ni = np.concatenate([n_groups[i] for i in rng.integers(len(n_groups), size=len(n_groups))])
        stats[b] = roc_auc(member[mi], non_member[ni])
    tail = (1 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def training_membership(card: dict | None, manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict] | str:
    """(rows with a `member` column: 1 trained on, 0 held out; the held-out kinds) or a skip reason."""
    from vlmops.models.training import TrainConfig, hold_out_drawings

    params = (card or {}).get("hyperparameters")
    recorded = (card or {}).get("data", {}).get("train_version")
    if not params or not recorded:
        return "the model card does not record its training rows (only models trained by vlmops have it)"
    if "vendor" not in manifest.columns or "concept" not in manifest.columns:
        return "the membership audit runs on the data the model was trained on (--data emoji)"
    vendors = tuple(params["vendors"])
    config = TrainConfig(
        vendors=vendors, seed=params["seed"], cross_vendor_fraction=params["cross_vendor_fraction"]
    )
    data = manifest[manifest["vendor"].isin(vendors)]
    train_split = data[data["split"] == "train"]
    if dataset_version(train_split) != recorded:
        return "this data differs from the model's training data (data-set version mismatch)"
    trained, held_drawings = hold_out_drawings(train_split, config)
    held_concepts = data[data["split"] != "train"]
    rows = pd.concat(
        [
            trained.assign(member=1, group="train"),
            held_drawings.assign(member=0, group="held_out_drawings"),
            held_concepts.assign(member=0, group="held_out_concepts"),
        ],
        ignore_index=True,
    )
    return rows, {"vendors": list(vendors)}


def membership_scores(model: VLM, image_emb: np.ndarray, concept_names: list[str]) -> np.ndarray:
    """Cosine similarity between each image and the prompt of its own concept."""
    names = sorted(set(concept_names))
    text = model.embed_texts([PROMPT.format(prompt_name(n)) for n in names])
    index = {n: i for i, n in enumerate(names)}
    return np.einsum("nd,nd->n", image_emb, text[[index[n] for n in concept_names]])


def privacy_report(rows: pd.DataFrame, scores: np.ndarray, seed: int, n_boot: int = 500) -> dict:
    """AUC with CI of the similarity-threshold attack, train vs each held-out group."""
    clusters = pd.factorize(rows["concept"])[0]
    groups = rows["group"].to_numpy()
    member = groups == "train"
    out: dict = {"attack": "image-text cosine similarity threshold", "n_members": int(member.sum())}
    for name in ("held_out_concepts", "held_out_drawings"):
        other = groups == name
        if not other.any():
            continue
        auc = roc_auc(scores[member], scores[other])
        low, high = auc_ci(scores[member], scores[other], clusters[member], clusters[other], n_boot, seed)
        out[name] = {"auc": auc, "ci_low": low, "ci_high": high, "n_non_members": int(other.sum())}
    out["auc"] = out["held_out_concepts"]["auc"] if "held_out_concepts" in out else None
    return out
