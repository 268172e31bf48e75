"""Online metrics from the prediction log and user feedback.

Only feedback whose source is "human" counts as ground truth: a label that came from a model (an
auto-accept, a pseudo-label) would let the model grade itself, and retraining on it would close a
feedback loop. Such rows are counted separately and never used for accuracy or retraining.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from vlmops.store.log import prediction_of


@dataclass(frozen=True)
class FeedbackMetrics:
    """Rates over classify requests and the feedback given on them."""

    requests: int
    abstention_rate: float | None
    feedback: int
    human_feedback: int
    model_feedback: int
    acceptance_rate: float | None
    correction_rate: float | None
    realised_accuracy: float | None  # on items a human judged: accepted, or corrected to the same label

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def feedback_metrics(requests: Iterable, feedback: Iterable) -> FeedbackMetrics:
    """Acceptance, correction, abstention and realised accuracy from logged rows."""
    predicted: dict[str, dict] = {}
    for row in requests:
        if row.endpoint == "classify":
            predicted[row.request_id] = prediction_of(row)
    abstained = sum(bool(p.get("abstain")) for p in predicted.values())
    human = [f for f in feedback if f.request_id in predicted]
    model_rows = [f for f in human if f.source != "human"]
    human = [f for f in human if f.source == "human"]
    accepted = sum(bool(f.accepted) for f in human)
    correct = sum(bool(f.accepted) or f.label == predicted[f.request_id].get("label") for f in human)
    return FeedbackMetrics(
        requests=len(predicted),
        abstention_rate=_rate(abstained, len(predicted)),
        feedback=len(human) + len(model_rows),
        human_feedback=len(human),
        model_feedback=len(model_rows),
        acceptance_rate=_rate(accepted, len(human)),
        correction_rate=_rate(len(human) - accepted, len(human)),
        realised_accuracy=_rate(correct, len(human)),
    )
