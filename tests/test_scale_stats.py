"""`RayJobStats`: per-actor sums of the batches' reports and the share of time every actor was busy."""

from __future__ import annotations

import pytest

from vlmops.scale.stats import RayJobStats


def test_two_actors_half_overlapping() -> None:
    # (pid, start, end, cpu_s, images, startup_wall_s, startup_cpu_s, startup_imports)
    rows = [
        (1, 0.0, 2.0, 1.8, 64, 3.0, 4.0, 0),
        (1, 2.0, 4.0, 1.9, 64, 3.0, 4.0, 0),
        (2, 2.0, 6.0, 3.2, 100, 5.0, 6.0, 12),
    ]
    stats = RayJobStats.from_batches(rows)
    one, two = stats.actors
    assert (one.pid, one.batches, one.images, one.busy_s, one.cpu_s) == (1, 2, 128, 4.0, 3.7)
    assert (two.startup_wall_s, two.startup_cpu_s, two.startup_imports) == (5.0, 6.0, 12)
    assert one.startup_imports == 0
    assert one.cpu_ms_per_image == pytest.approx(1000 * 3.7 / 128)
    assert stats.all_busy_fraction == round(2.0 / 6.0, 3)  # both busy 2-4 s of the 0-6 s busy
    assert stats.busy_span_s == 6.0
    assert stats.to_dict()["actors"][1]["cpu_ms_per_image"] == 32.0


def test_one_actor_and_no_batches() -> None:
    rows = [(7, 1.0, 3.0, 1.0, 10, 0.5, 0.5, -1), (7, 4.0, 5.0, 1.0, 10, 0.5, 0.5, -1)]
    stats = RayJobStats.from_batches(rows)
    assert stats.all_busy_fraction == 1.0 and stats.busy_span_s == 4.0
    assert RayJobStats.from_batches([]).actors == []
