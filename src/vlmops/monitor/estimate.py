"""Label-free accuracy estimates for production windows, fitted on a labelled validation split.

- AC: average confidence (max softmax) after temperature scaling fitted on the validation split.
- ATC (Garg et al., 2022): the confidence threshold t at which the share of validation items above t
  equals validation accuracy; the estimate is the share of production items above t.
- DoC (Guillory et al., 2021): validation accuracy minus the drop in average confidence.
When labels arrive later, `realised` compares each estimate with the truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vlmops.evaluate.calibration import fit_temperature, softmax
from vlmops.monitor.base import DriftInputError, as_matrix

METHODS = ("ac", "atc", "doc")


@dataclass
class AccuracyEstimator:
    """Fitted on validation logits + labels; estimates accuracy of unlabelled windows from logits."""

    temperature: float = 1.0
    threshold: float = 0.5
    val_accuracy: float = 0.0
    val_confidence: float = 0.0
    naive_val_confidence: float = 0.0

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray) -> AccuracyEstimator:
        """Fit temperature, the ATC threshold and the validation accuracy/confidence."""
        logits = as_matrix(logits, "validation logits", min_rows=10)
        labels = np.asarray(labels)
        if labels.shape != (len(logits),):
            raise DriftInputError(f"{len(labels)} labels for {len(logits)} validation rows")
        temperature = fit_temperature(logits, labels)
        probs = softmax(logits, temperature)
        confidence = probs.max(1)
        accuracy = float((probs.argmax(1) == labels).mean())
        # share of items with confidence > t equals accuracy  <=>  t is the (1 - accuracy) quantile
        threshold = float(np.quantile(confidence, 1.0 - accuracy))
        return cls(
            temperature, threshold, accuracy, float(confidence.mean()), float(softmax(logits).max(1).mean())
        )

    def estimate(self, logits: np.ndarray) -> dict[str, float]:
        """Estimated accuracy of a window by each method, plus the naive uncalibrated confidence."""
        logits = as_matrix(logits, "window logits", min_rows=1)
        confidence = softmax(logits, self.temperature).max(1)
        return {
            "ac": float(confidence.mean()),
            "atc": float((confidence > self.threshold).mean()),
            "doc": float(np.clip(self.val_accuracy - (self.val_confidence - confidence.mean()), 0.0, 1.0)),
            "naive_confidence": float(softmax(logits).max(1).mean()),
        }

    def to_dict(self) -> dict:
        """JSON-ready state."""
        return asdict(self)


def realised(estimates: dict[str, float], accuracy: float) -> dict[str, float]:
    """Absolute error of each estimate once the true accuracy is known."""
    return {name: abs(value - accuracy) for name, value in estimates.items()}
