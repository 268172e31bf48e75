"""The speed-up statistics of `bench/scale.py` and the pooling of runs in `bench/scale_pool.py`: the
paired median and its bootstrap interval, what an interval decides against the target, and pooling
only runs of one kind."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from scale import decided, speedup_summary
from scale_pool import pool


def test_the_paired_speedup_is_the_median_of_each_rounds_ratio_and_its_interval_holds_it() -> None:
    rng = np.random.default_rng(1)
    ray1 = rng.uniform(10, 16, size=15)  # the host's speed drifts between rounds
    ratios = rng.uniform(1.6, 2.0, size=15)
    summary = speedup_summary(list(ray1), list(ray1 / ratios))
    assert summary["speedup_ray2_over_ray1_paired"] == pytest.approx(np.median(ratios))
    assert summary["speedup_ray2_over_ray1"] == pytest.approx(np.median(ray1) / np.median(ray1 / ratios))
    low, high = summary["speedup_paired_ci95"]
    assert ratios.min() <= low < np.median(ratios) < high <= ratios.max()
    low, high = summary["speedup_ci95"]
    assert low < summary["speedup_ray2_over_ray1"] < high
    assert summary["rounds_at_target"] == int((ratios >= 1.8).sum())


def test_rounds_that_all_agree_decide_the_target_and_scattered_ones_do_not() -> None:
    ray1 = [10.0, 12.0, 11.0, 14.0, 13.0]
    halved = speedup_summary(ray1, [t / 2 for t in ray1])
    assert halved["speedup_paired_ci95"] == pytest.approx([2.0, 2.0])
    assert decided(halved["speedup_paired_ci95"]) == "met"
    slow = speedup_summary(ray1, [t / 1.5 for t in ray1])
    assert decided(slow["speedup_paired_ci95"]) == "NOT met"
    scattered = speedup_summary(ray1, [t / r for t, r in zip(ray1, [1.6, 2.0, 1.7, 1.95, 1.8], strict=True)])
    assert decided(scattered["speedup_paired_ci95"]).startswith("undecided")
    assert "speedup_paired_ci95" not in speedup_summary([10.0, 11.0], [5.0, 6.0])  # two rounds: no interval
    assert decided(None) == "too few rounds to say"


def _run(images: int, rounds: list[tuple[float, float, float, float]]) -> dict:
    names = ("local1", "ray1", "local2", "ray2")
    return {
        "images": images,
        "batch_size": 64,
        "seconds": {n: [r[i] for r in rounds] for i, n in enumerate(names)},
    }


def test_pooling_joins_every_round_of_runs_of_one_set_and_refuses_two_sets() -> None:
    a = _run(100, [(10, 11, 7, 6), (12, 12, 8, 6)])
    b = _run(100, [(11, 10, 7, 5)])
    pooled = pool([a, b])
    assert pooled["seconds"]["ray1"] == [11, 12, 10] and pooled["runs"] == 2
    assert pooled["speedup_ray2_over_ray1_paired"] == pytest.approx(np.median([11 / 6, 2.0, 2.0]))
    assert pooled["ray_overhead_1_core"] == pytest.approx(11 / 11 - 1)  # medians: ray1 11, local1 11
    assert pooled["ray_overhead_1_core_paired"] == pytest.approx(np.median([11 / 10, 12 / 12, 10 / 11]) - 1)
    assert pooled["ray_overhead_2_cores_paired"] == pytest.approx(np.median([6 / 7, 6 / 8, 5 / 7]) - 1)
    with pytest.raises(ValueError, match="differ"):
        pool([a, _run(200, [(10, 11, 7, 6)])])


def test_a_ray_only_run_adds_its_rounds_to_the_speedup_but_not_to_the_overheads() -> None:
    full = _run(100, [(10, 11, 7, 6), (12, 12, 8, 6)])
    ray_only = {"images": 100, "batch_size": 64, "seconds": {"ray1": [9.0, 14.0], "ray2": [5.0, 7.0]}}
    pooled = pool([full, ray_only])
    assert pooled["seconds"]["ray1"] == [11, 12, 9.0, 14.0] and pooled["seconds"]["local1"] == [10, 12]
    assert pooled["speedup_ray2_over_ray1_paired"] == pytest.approx(np.median([11 / 6, 2.0, 9 / 5, 2.0]))
    assert pooled["overhead_runs"] == 1
    assert pooled["ray_overhead_1_core_paired"] == pytest.approx(np.median([11 / 10, 12 / 12]) - 1)
    assert "ray_overhead_1_core" not in pool([ray_only])
