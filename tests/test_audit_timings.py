"""The audit's per-stage ``timings``: wall and CPU seconds of the image scan, the embedding, the label
views and each check, with the embedding counted once in its own stage (not in the first check that
reads it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from test_audit_scan import _write_set
from vlmops.audit.run import CHECKS, AuditInputs, run_audit
from vlmops.store.cache import open_cache
from vlmops.store.embed import content_sha256
from vlmops.timing import StageTimer

BURN_S = 0.3


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_stage_timer_tells_cpu_from_waiting() -> None:
    timer = StageTimer()
    with timer.stage("sleep"):
        time.sleep(0.3)
    with timer.stage("burn"):
        _burn(0.3)
    with timer.stage("burn"):  # a stage timed twice adds up
        _burn(0.1)
    assert timer.stages["sleep"]["wall_s"] >= 0.29 and timer.stages["sleep"]["cpu_s"] < 0.1
    assert timer.stages["burn"]["cpu_s"] >= 0.39
    assert timer.wall() == {name: entry["wall_s"] for name, entry in timer.stages.items()}


def test_stage_timer_records_each_stages_own_peak_memory() -> None:
    """A stage that touches 400 MiB peaks 400 MiB above the next one, which only follows it: the peak is
    the stage's own, not the process's lifetime one; an outer stage sees its inner stages' peaks."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux procfs to reset the peak")
    timer = StageTimer()
    with timer.stage("outer"):
        with timer.stage("big"):
            block = np.ones(400 * 2**20, dtype=np.uint8)  # written, so resident
            del block
        with timer.stage("small"):
            small = np.ones(2**20, dtype=np.uint8)
            del small
    big, after, outer = (timer.stages[name] for name in ("big", "small", "outer"))
    assert big["peak_rss_mib"] - after["peak_rss_mib"] > 350
    assert outer["peak_rss_mib"] >= big["peak_rss_mib"]
    assert big["rss_end_mib"] < big["peak_rss_mib"] - 350  # freed by its end


def test_audit_reports_cpu_and_wall_per_stage_with_embedding_apart(tmp_path: Path, fake_model) -> None:
    frame = _write_set(tmp_path / "images")

    class SlowModel(fake_model):
        def embed_images(self, images):
            _burn(BURN_S)  # CPU spent embedding: must land in the embedding stage
            return super().embed_images(images)

    keys = [content_sha256(p) for p in frame["image"]]
    with open_cache(str(tmp_path / "store.sqlite")) as cache:
        inputs = AuditInputs(frame, keys, SlowModel(), cache, False)
        report = run_audit(inputs, list(CHECKS), {}, [], [], min_n=3)
    timings = json.loads(json.dumps(report.to_dict()))["timings"]
    assert list(timings) == ["image_scan", "embedding", "label_views", *CHECKS]
    for entry in timings.values():
        assert set(entry) == {"wall_s", "cpu_s", "peak_rss_mib", "rss_end_mib"}
        assert entry["wall_s"] >= 0 and entry["cpu_s"] >= 0 and entry["peak_rss_mib"] > 0
    assert timings["embedding"]["cpu_s"] >= BURN_S * 0.9
    assert timings["duplicates"]["cpu_s"] < BURN_S * 0.9  # the vectors were there already
    assert report.meta["timing_seconds"] == {name: e["wall_s"] for name, e in timings.items()}


def test_the_label_views_are_let_go_after_the_last_check_that_reads_them(tmp_path: Path, fake_model) -> None:
    """The views hold several (n, classes) matrices (1.5 GiB each per 100k records at 1,923 classes):
    balance, PII and poisoning run without them."""
    frame = _write_set(tmp_path / "images")
    keys = [content_sha256(p) for p in frame["image"]]
    held = {}
    with open_cache(str(tmp_path / "store.sqlite")) as cache:
        inputs = AuditInputs(frame, keys, fake_model(), cache, False)
        run_audit(
            inputs, list(CHECKS), {}, [], [], min_n=3, on_check=lambda n: held.update({n: len(inputs.views)})
        )
    assert held["labels"] == held["alignment"] == 1
    assert held["balance"] == held["pii"] == held["poisoning"] == 0 and inputs.views == {}
