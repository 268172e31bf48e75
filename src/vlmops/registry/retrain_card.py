"""What a retrained model's card records, the same for a classifier and a captioner."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any


def retrain_sections(
    model: Any,
    data_version: str,
    counts: dict,
    feedback_from: dict,
    replay: int,
    config: Any,
    history: list,
    **data_counts: int,
) -> tuple[dict, dict]:
    """The card's `retrain` section (parent, feedback, replay, config, history) and its new `data`
    section: the parent's, with this run's `train_version` and `data_counts` (sizes of what was used)."""
    extra = {
        "parent": model.info.version,
        "data_version": data_version,
        "feedback": counts,
        "feedback_from": feedback_from,
        "replay": replay,
        "config": asdict(config),
        "history": history,
    }
    parent_data = (model.card or {}).get("data") or {}
    data = {
        **parent_data,
        "train_version": data_version,
        "parent_train_version": parent_data.get("train_version"),
        **data_counts,
    }
    return extra, data
