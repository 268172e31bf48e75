"""Is the canary worse than the champion by what people said about their answers? (any model kind)

The served log records which version answered each request (canary traffic under the canary's
version). Each request's latest human feedback (the feedback-loop guard: a model's verdict is not
evidence) counts as good when it accepted the answer and bad when it rejected or corrected it. A
one-sided Fisher exact test asks whether the canary's answers are rejected more often than the
champion's over the same period; the canary is to be rolled back when p < alpha, and only once each
side has `min_feedback` judged answers (before that the check says it cannot tell yet). Ratings are
reported per version beside it (mean, and a one-sided Mann-Whitney p-value), not used to decide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from scipy import stats

from vlmops.store.log import PredictionLog


@dataclass
class CanaryCheck:
    """Feedback on the canary's and the champion's answers, and the verdict."""

    canary: str
    champion: str
    judged: dict[str, int]  # version -> answers with human feedback
    rejected: dict[str, int]  # version -> of those, rejected or corrected
    mean_rating: dict[str, float | None]
    p_worse: float | None  # Fisher exact, one-sided: the canary rejected more often
    p_ratings_lower: float | None  # Mann-Whitney, one-sided, where both sides have ratings
    worse: bool
    enough: bool

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def canary_check(
    log: PredictionLog,
    canary: str,
    champion: str,
    alpha: float = 0.05,
    min_feedback: int = 20,
    since: float | None = None,
) -> CanaryCheck:
    """Compare human feedback on the answers of two model versions in the log (from `since`)."""
    if canary == champion:
        from vlmops.errors import VlmopsError

        raise VlmopsError(f"the canary and the champion are the same version ({canary}); nothing to compare")
    versions = {r.request_id: r.model_version for r in log.requests(since=since)}
    latest = {}
    for fb in log.feedback():
        if fb.source == "human" and versions.get(fb.request_id) in (canary, champion):
            latest[fb.request_id] = fb  # a person's last word on a request counts
    judged = {canary: 0, champion: 0}
    rejected = {canary: 0, champion: 0}
    ratings: dict[str, list[float]] = {canary: [], champion: []}
    for request_id, fb in latest.items():
        version = versions[request_id]
        judged[version] += 1
        rejected[version] += int(not fb.accepted)
        if fb.rating is not None:
            ratings[version].append(float(fb.rating))
    enough = min(judged.values()) >= min_feedback
    p_worse = None
    if min(judged.values()) > 0:
        table = [
            [rejected[canary], judged[canary] - rejected[canary]],
            [rejected[champion], judged[champion] - rejected[champion]],
        ]
        p_worse = float(stats.fisher_exact(table, alternative="greater").pvalue)
    p_ratings = None
    if ratings[canary] and ratings[champion]:
        p_ratings = float(stats.mannwhitneyu(ratings[canary], ratings[champion], alternative="less").pvalue)
    mean = {v: (sum(r) / len(r) if r else None) for v, r in ratings.items()}
    worse = bool(enough and p_worse is not None and p_worse < alpha)
    return CanaryCheck(canary, champion, judged, rejected, mean, p_worse, p_ratings, worse, enough)
