"""Feedback metrics of the monitor; computed from the logged rows, they live in `vlmops.store.feedback`."""

from vlmops.store.feedback import FeedbackMetrics, feedback_metrics, prediction_of

__all__ = ["FeedbackMetrics", "feedback_metrics", "prediction_of"]
