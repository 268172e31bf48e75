"""What a /v1/feedback body records, by the kind of request it is about.

A classification (or tag, search ...) takes ``accepted`` and, when rejected, the correct ``label``. A
chat completion takes a ``rating`` and/or a corrected ``answer`` (stored in the feedback row's label
column, which retraining reads); its ``accepted`` means "the answer stands uncorrected": it defaults to
true without an ``answer`` and to false with one, and cannot be true with one.
"""

from __future__ import annotations

from typing import NamedTuple

from vlmops.serve.errors import ApiError
from vlmops.serve.schemas import FeedbackRequest


class Verdict(NamedTuple):
    """The values of one feedback row."""

    accepted: bool
    label: str | None  # the correct label, or a chat completion's corrected answer
    rating: float | None


def verdict(body: FeedbackRequest, endpoint: str | None) -> Verdict:
    """The feedback row a body asks for on a request of `endpoint`; 422 when the body does not fit it."""
    return _chat(body) if endpoint == "chat" else _prediction(body)


def _chat(body: FeedbackRequest) -> Verdict:
    if body.label is not None:
        raise ApiError(
            422, "wrong_field", "feedback on a chat completion takes the corrected 'answer', not 'label'"
        )
    answer = None if body.answer is None else body.answer.strip()
    if answer == "":
        raise ApiError(422, "empty_answer", "'answer' is empty: send the corrected answer, or leave it out")
    if answer is None and body.rating is None and body.accepted is None:
        raise ApiError(
            422,
            "empty_feedback",
            "feedback on a chat completion needs a 'rating' and/or a corrected 'answer'",
        )
    if answer is not None and body.accepted:
        raise ApiError(
            422,
            "conflicting_feedback",
            "'accepted': true says the answer was right, but an 'answer' corrects it; send one of them",
        )
    accepted = body.accepted if body.accepted is not None else answer is None
    return Verdict(accepted, answer, body.rating)


def _prediction(body: FeedbackRequest) -> Verdict:
    if body.answer is not None:
        raise ApiError(
            422, "wrong_field", "'answer' is for chat completions; a prediction's correction goes in 'label'"
        )
    if body.accepted is None:
        raise ApiError(
            422, "missing_accepted", "say whether the prediction was right: 'accepted': true or false"
        )
    if not body.accepted and not (body.label or "").strip():
        raise ApiError(422, "missing_label", "a rejected prediction needs the correct 'label'")
    return Verdict(body.accepted, body.label, body.rating)
