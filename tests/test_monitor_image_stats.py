"""Image statistics: exact values on constructed images, calibrated false alarms, named findings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlmops.monitor.base import DriftInputError
from vlmops.monitor.image_stats import ImageStatsDetector, describe_image, sniff_format


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_describe_image_matches_closed_forms():
    flat = Image.new("RGB", (100, 50), (80, 80, 80))
    data = encoded(flat)
    stats = describe_image(flat, data)
    assert stats == {
        "width": 100,
        "height": 50,
        "aspect": 2.0,
        "brightness": pytest.approx(80.0),
        "contrast": pytest.approx(0.0),
        "bytes": len(data),
        "format": "PNG",
    }
    halves = np.zeros((640, 640), dtype=np.uint8)
    halves[:, 320:] = 255  # half black, half white: mean 127.5, standard deviation 127.5
    big = Image.fromarray(halves).convert("RGB")  # reduced by 10 to a 64-px thumbnail, edges stay sharp
    stats = describe_image(big, encoded(big, "JPEG"))
    assert stats["brightness"] == pytest.approx(127.5, abs=1.0)
    assert stats["contrast"] == pytest.approx(127.5, abs=1.0)
    assert stats["format"] == "JPEG"


def test_sniff_format_reads_the_header_not_a_name():
    image = Image.new("RGB", (8, 8))
    assert sniff_format(encoded(image, "WEBP")) == "WEBP"
    assert sniff_format(b"not an image at all") == "unknown"


def draw(rng, n, brightness=120.0, formats=("PNG", "JPEG"), weights=(0.7, 0.3)):
    """Stats of n photos: sizes, brightness and contrast vary continuously, format by share."""
    width = rng.integers(300, 3000, n)
    height = rng.integers(300, 3000, n)
    return [
        {
            "width": int(w),
            "height": int(h),
            "aspect": w / h,
            "brightness": float(b),
            "contrast": float(c),
            "bytes": int(s),
            "format": str(f),
        }
        for w, h, b, c, s, f in zip(
            width,
            height,
            rng.normal(brightness, 20, n),
            rng.gamma(8, 6, n),
            rng.lognormal(12, 0.5, n),
            rng.choice(formats, n, p=weights),
            strict=True,
        )
    ]


def test_false_alarm_rate_is_calibrated_at_alpha_005():
    rng = np.random.default_rng(0)
    flagged = [ImageStatsDetector().fit(draw(rng, 150)).test(draw(rng, 50)).drifted for _ in range(1000)]
    rate = float(np.mean(flagged))
    assert 0.03 <= rate <= 0.07, f"false-alarm rate {rate:.3f} over 1000 no-shift windows"


def test_darker_images_and_a_format_switch_are_each_named():
    rng = np.random.default_rng(1)
    detector = ImageStatsDetector().fit(draw(rng, 300))
    dark = detector.test(draw(rng, 60, brightness=80.0))
    assert dark.drifted and dark.evidence["drifted"] == ["brightness"]
    assert (
        dark.evidence["medians"]["brightness"]["window"] < dark.evidence["medians"]["brightness"]["reference"]
    )
    webp = detector.test(draw(rng, 60, formats=("PNG", "WEBP"), weights=(0.5, 0.5)))
    assert webp.drifted and webp.evidence["drifted"] == ["format"]


def test_state_round_trip_gives_the_same_answer():
    rng = np.random.default_rng(2)
    detector = ImageStatsDetector().fit(draw(rng, 100))
    window = draw(rng, 40, brightness=110.0)
    restored = ImageStatsDetector.from_state(detector.state())
    assert restored.test(window).p_value == pytest.approx(detector.test(window).p_value)


def test_bad_inputs_name_the_problem():
    with pytest.raises(DriftInputError, match="brightness"):
        ImageStatsDetector().fit([{"width": 1, "height": 1}])
    with pytest.raises(DriftInputError, match="no image statistics"):
        ImageStatsDetector().fit([])
    with pytest.raises(DriftInputError, match="at least 2"):
        ImageStatsDetector().fit(draw(np.random.default_rng(3), 10)).test(draw(np.random.default_rng(4), 1))


def test_grey_mean_and_std_equal_pillows_imagestat_exactly():
    """The statistics the gateway logs per image: PIL ImageStat's numbers, computed without its loops."""
    from PIL import ImageStat

    from vlmops.models.image_stats import grey_mean_std

    rng = np.random.default_rng(3)
    for i in range(200):
        h, w = rng.integers(1, 120, 2)
        if i % 4:
            pixels = rng.integers(0, 256, (h, w), dtype=np.uint8)
        else:
            pixels = np.full((h, w), rng.integers(0, 256), dtype=np.uint8)  # constant: std exactly 0
        image = Image.fromarray(pixels, "L")
        stat = ImageStat.Stat(image)
        assert grey_mean_std(image) == (stat.mean[0], stat.stddev[0])
