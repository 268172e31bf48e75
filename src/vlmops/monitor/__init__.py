"""Monitoring: drift detectors (`fit(reference).test(window)`), online detection, and their signals."""

from vlmops.monitor.base import Detector, DriftResult
from vlmops.monitor.domain import DomainClassifierDetector
from vlmops.monitor.image_stats import ImageStatsDetector
from vlmops.monitor.mmd import MMDDetector
from vlmops.monitor.online import OnlineCUSUM
from vlmops.monitor.permutation import PermutationShiftDetector
from vlmops.monitor.univariate import KSDetector, KSPCADetector, PredictionShiftDetector
from vlmops.monitor.vlm_signals import ModalityGapDetector

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        MMDDetector,
        KSPCADetector,
        KSDetector,
        PredictionShiftDetector,
        DomainClassifierDetector,
        ModalityGapDetector,
        ImageStatsDetector,
        PermutationShiftDetector,
    )
}

__all__ = [
    "DETECTORS",
    "Detector",
    "DomainClassifierDetector",
    "DriftResult",
    "ImageStatsDetector",
    "KSDetector",
    "KSPCADetector",
    "MMDDetector",
    "ModalityGapDetector",
    "OnlineCUSUM",
    "PermutationShiftDetector",
    "PredictionShiftDetector",
]
