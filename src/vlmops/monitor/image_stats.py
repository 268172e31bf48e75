"""Image statistics as a drift signal: size, shape, brightness, contrast, file size and format.

The server describes every decoded image (`models.image_stats.describe_image`: brightness and
contrast on a box-reduced thumbnail of at most ~64 px; timed once with a one-off script: 0.12 ms for a
72-px emoji, 22 ms for a 12 MP photo whose decode took 190 ms) and logs the description with the
request; the monitor describes the reference images the same way. `ImageStatsDetector` then runs a KS
test per numeric statistic and a chi-squared test on the format counts, with Benjamini–Hochberg over
all of them: a new camera, a resizing proxy, a dark scene or a switch from PNG to JPEG each shows up as
its own named finding, before any embedding moves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from vlmops.models.image_stats import THUMBNAIL_SIDE, describe_image, sniff_format
from vlmops.monitor.base import Detector, DriftInputError, DriftResult

NUMERIC = ("width", "height", "aspect", "brightness", "contrast", "bytes")
__all__ = ["NUMERIC", "THUMBNAIL_SIDE", "ImageStatsDetector", "describe_image", "sniff_format"]


def _numeric(described: Sequence[dict], name: str) -> np.ndarray:
    if not described:
        raise DriftInputError(f"{name} has no image statistics")
    try:
        return np.array([[float(d[k]) for k in NUMERIC] for d in described])
    except (KeyError, TypeError, ValueError) as exc:
        raise DriftInputError(f"{name}: every entry needs numeric {', '.join(NUMERIC)} ({exc})") from exc


class ImageStatsDetector(Detector):
    """KS per numeric image statistic plus chi-squared on formats, Benjamini–Hochberg across them."""

    name = "image_stats"
    state_fields = ("reference", "formats")

    def _fit(self, reference) -> None:
        self.reference = _numeric(reference, "reference")
        self.formats = [str(d.get("format", "unknown")) for d in reference]

    def _test(self, window) -> DriftResult:
        x = np.asarray(self.reference)
        y = _numeric(window, "window")
        if len(y) < 2:
            raise DriftInputError("a window needs at least 2 images")
        ks = {
            name: sps.ks_2samp(x[:, j], y[:, j]) if np.ptp(np.concatenate([x[:, j], y[:, j]])) > 0 else None
            for j, name in enumerate(NUMERIC)
        }  # a statistic that is constant in both samples cannot have drifted
        p_values = {name: 1.0 if r is None else float(r.pvalue) for name, r in ks.items()}
        p_values["format"] = self._format_p(window)
        names = list(p_values)
        adjusted = sps.false_discovery_control([p_values[n] for n in names], method="bh")
        p = float(adjusted.min())
        drifted = [n for n, q in zip(names, adjusted, strict=True) if q < self.alpha]
        return DriftResult(
            self.name,
            max((float(r.statistic) for r in ks.values() if r is not None), default=0.0),
            p,
            p < self.alpha,
            self.alpha,
            len(x),
            len(y),
            {
                "p_values": p_values,
                "adjusted": dict(zip(names, map(float, adjusted), strict=True)),
                "drifted": drifted,
                "medians": {
                    n: {"reference": float(np.median(x[:, j])), "window": float(np.median(y[:, j]))}
                    for j, n in enumerate(NUMERIC)
                },
            },
        )

    def _format_p(self, window: Sequence[dict]) -> float:
        """Chi-squared homogeneity test of format counts (reference vs window); 1.0 when one format."""
        window_formats = [str(d.get("format", "unknown")) for d in window]
        kinds = sorted(set(map(str, self.formats)) | set(window_formats))
        if len(kinds) < 2:
            return 1.0
        reference_formats = [str(f) for f in self.formats]  # an array after from_state
        table = np.array([[fs.count(k) for k in kinds] for fs in (reference_formats, window_formats)])
        return float(sps.chi2_contingency(table).pvalue)
