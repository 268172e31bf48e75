"""Dynamic batching, load shedding, the token bucket, and the durable log (incl. concurrent processes)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from vlmops.errors import StoreError
from vlmops.serve.batcher import MicroBatcher, ModelSlot, Overloaded
from vlmops.serve.keys import KeyStore
from vlmops.serve.limits import TokenBucket
from vlmops.serve.logwriter import LogWriter
from vlmops.store.log import PredictionLog, PredictionRow, embedding_of


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_items_form_one_batch_and_results_keep_their_order():
    seen: list[list[int]] = []

    def double(items):
        seen.append(list(items))
        return [2 * x for x in items]

    async def main():
        batcher = MicroBatcher(double, ThreadPoolExecutor(1), max_batch=64, max_wait_ms=50)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.stop()
        return results

    assert _run(main()) == [2 * i for i in range(10)]
    assert seen == [list(range(10))]


def test_batches_never_exceed_max_batch():
    sizes: list[int] = []

    def record(items):
        sizes.append(len(items))
        return items

    async def main():
        batcher = MicroBatcher(record, ThreadPoolExecutor(1), max_batch=4, max_wait_ms=20)
        batcher.start()
        await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.submit(99)
        await batcher.stop()

    _run(main())
    assert max(sizes[:-1]) == 4 and sum(sizes) == 11 and sizes[-1] == 1


def test_a_lone_item_starts_at_once_when_the_model_is_idle():
    # a window of a minute: an idle model that waited for company would leave the item there
    waits: list[float] = []

    async def main():
        observe = lambda n, w: waits.extend(w)  # noqa: E731
        batcher = MicroBatcher(lambda x: x, ThreadPoolExecutor(1), max_wait_ms=60_000, on_batch=observe)
        batcher.start()
        results = [await asyncio.wait_for(batcher.submit(i), 30) for i in range(3)]
        await batcher.stop()
        return results

    assert _run(main()) == [0, 1, 2]
    assert len(waits) == 3 and max(waits) < 30


def test_a_batch_fills_while_the_model_is_busy_and_starts_when_it_frees_up():
    # the image and text batchers share one model thread through a ModelSlot: while a text batch runs,
    # images that arrive one by one wait for it together (however long the window), then run as one batch
    release = threading.Event()
    seen: list[list[int]] = []
    slot = ModelSlot()
    model = ThreadPoolExecutor(1)

    def record(items):
        seen.append(list(items))
        return items

    async def main():
        texts = MicroBatcher(lambda items: release.wait(5) and items, model, max_wait_ms=0, slot=slot)
        images = MicroBatcher(record, model, max_wait_ms=60_000, slot=slot)
        texts.start()
        images.start()
        running = texts.submit("long text")
        while not slot.busy:
            await asyncio.sleep(0.001)
        futures = []
        for i in range(3):
            futures.append(images.submit(i))
            await asyncio.sleep(0.02)  # the image batcher runs between arrivals
        assert seen == []  # nothing ran yet
        release.set()
        results = await asyncio.wait_for(asyncio.gather(running, *futures), 30)
        await texts.stop()
        await images.stop()
        return results

    assert _run(main()) == ["long text", 0, 1, 2]
    assert seen == [[0, 1, 2]]


async def _one_item_running(release: threading.Event) -> tuple[MicroBatcher, asyncio.Future]:
    """A batcher (one item per batch, queue of 2) whose model holds its first item until `release`."""

    def slow(items):
        release.wait(5)
        return items

    batcher = MicroBatcher(slow, ThreadPoolExecutor(1), max_batch=1, max_wait_ms=0, queue_size=2)
    batcher.start()
    first = batcher.submit(0)
    await asyncio.sleep(0.05)  # the first item is now running, so the queue is empty
    return batcher, first


def test_a_full_queue_refuses_at_once():
    release = threading.Event()

    async def main():
        batcher, first = await _one_item_running(release)
        queued = [batcher.submit(1), batcher.submit(2)]
        with pytest.raises(Overloaded):
            batcher.submit(3)
        release.set()
        await asyncio.gather(first, *queued)
        await batcher.stop()

    _run(main())


def test_model_errors_reach_every_caller_and_cancelled_items_are_skipped():
    calls: list[list[int]] = []

    def fail(items):
        calls.append(list(items))
        raise RuntimeError("model broke")

    async def main():
        batcher = MicroBatcher(fail, ThreadPoolExecutor(1), max_batch=8, max_wait_ms=30)
        batcher.start()
        gone = batcher.submit(0)
        gone.cancel()
        futures = [batcher.submit(i) for i in (1, 2)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.stop()
        return results

    results = _run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert calls == [[1, 2], [1], [2]]  # the batch failed, so each item was tried alone


def test_one_bad_item_fails_only_its_own_caller():
    calls: list[list[str]] = []

    def embed(items):
        calls.append(list(items))
        return [len(x.encode()) for x in items]  # a lone surrogate raises, as a tokenizer would

    async def main():
        batcher = MicroBatcher(embed, ThreadPoolExecutor(1), max_batch=8, max_wait_ms=30)
        batcher.start()
        futures = [batcher.submit(x) for x in ("ab", "\ud800", "cde")]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.stop()
        return results

    good, bad, other = _run(main())
    assert (good, other) == (2, 3)
    assert isinstance(bad, UnicodeEncodeError)
    assert calls[0] == ["ab", "\ud800", "cde"] and len(calls) == 4


def test_batches_take_owners_in_turn_and_drop_expired_items():
    seen: list[list[str]] = []

    def record(items):
        seen.append(list(items))
        return items

    async def main():
        batcher = MicroBatcher(record, ThreadPoolExecutor(1), max_batch=4, max_wait_ms=30)
        batcher.start()
        past = time.perf_counter() - 1
        expired = batcher.submit("late", owner="b", deadline=past)
        flood = [batcher.submit(f"a{i}", owner="a") for i in range(12)]
        other = [batcher.submit(f"b{i}", owner="b") for i in range(2)]
        assert batcher.depth == 15
        await asyncio.gather(*flood, *other)
        await batcher.stop()
        return expired

    expired = _run(main())
    assert expired.cancelled()  # its deadline had passed: it never reached the model
    assert sorted(seen[0]) == ["a0", "a1", "b0", "b1"]  # b waited one batch, not behind twelve of a
    assert sum(len(b) for b in seen) == 14


def test_cancelled_items_free_their_queue_slot_at_once():
    release = threading.Event()

    async def main():
        batcher, first = await _one_item_running(release)
        queued = [batcher.submit(1), batcher.submit(2)]
        for future in queued:
            future.cancel()  # their requests timed out
        await asyncio.sleep(0)
        assert batcher.depth == 0
        again = batcher.submit(3)  # the queue has room again
        release.set()
        assert await asyncio.gather(first, again) == [0, 3]
        await batcher.stop()

    _run(main())


def test_token_bucket_allows_burst_then_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0
    now[0] += 100
    assert sum(bucket.take() == 0.0 for _ in range(10)) == 3  # never more than the burst


def _row(i: int, prefix: str = "r") -> PredictionRow:
    return PredictionRow(
        f"{prefix}{i}",
        "classify",
        "m-1",
        [f"h{i}"],
        1.0,
        embedding=np.full((1, 4), i, np.float32),
        prediction={"label": "x"},
        confidence=0.5,
    )


def test_log_round_trips_rows_and_embeddings(tmp_path):
    log = PredictionLog(str(tmp_path / "s.sqlite"))
    log.write([_row(1), _row(2)])
    rows = log.requests()
    assert [r.request_id for r in rows] == ["r1", "r2"]
    assert embedding_of(rows[1]).tolist() == [[2.0] * 4]
    with pytest.raises(Exception):  # noqa: B017 - a duplicate id violates the primary key
        log.write([_row(1)])
    assert len(log.requests()) == 2  # the failed transaction wrote nothing


def test_log_writer_groups_rows_into_few_commits(tmp_path):
    log = PredictionLog(str(tmp_path / "s.sqlite"))
    commits: list[int] = []
    writer = LogWriter(log, on_commit=lambda n, s: commits.append(n))

    async def main():
        await asyncio.gather(*(writer.write(_row(i)) for i in range(200)))

    _run(main())
    writer.close()
    assert len(log.request_ids()) == 200 and sum(commits) == 200 and len(commits) < 200


def test_group_sync_acknowledges_rows_before_their_fsync_and_shares_one_fsync(tmp_path):
    # kill -9 safety needs the commit (SQLite has written the WAL); only a power cut needs the fsync, which
    # the writer pays once for every commit since the last one instead of once per request
    log = PredictionLog(str(tmp_path / "s.sqlite"), sync="group")
    fsyncs: list[int] = []
    disk = threading.Event()
    flush = log.sync

    def slow_sync():
        disk.wait(10)  # the disk is slow: the first fsync holds until the test lets it go
        fsyncs.append(1)
        flush()

    log.sync = slow_sync
    writer = LogWriter(log, sync_interval_s=0)

    async def main():
        for i in range(20):  # one at a time, as at concurrency 1: each answered while the fsync waits
            await asyncio.wait_for(writer.write(_row(i)), 10)

    _run(main())
    assert fsyncs == [] and len(PredictionLog(str(tmp_path / "s.sqlite")).request_ids()) == 20
    disk.set()
    writer.close()
    # the one that held, then one for the 19 commits made while it held, and (when close() wins the race
    # against the sync thread) a final one at close: never one per commit
    assert 2 <= len(fsyncs) <= 3, fsyncs


def test_full_sync_fsyncs_every_commit_and_group_sync_does_not(tmp_path):
    def synchronous(log: PredictionLog) -> int:
        with log.engine.connect() as conn:
            return conn.exec_driver_sql("PRAGMA synchronous").scalar()

    assert synchronous(PredictionLog(str(tmp_path / "a.sqlite"))) == 2  # FULL, the library default
    assert synchronous(PredictionLog(str(tmp_path / "b.sqlite"), sync="group")) == 1  # NORMAL
    with pytest.raises(StoreError, match="full, group"):
        PredictionLog(str(tmp_path / "c.sqlite"), sync="never")


def test_a_process_that_checked_before_another_created_the_tables_still_opens_the_log(tmp_path, monkeypatch):
    # `vlmops serve --workers 2` on a fresh store: both workers look for the tables, both see none, one
    # creates them and the other's CREATE TABLE fails with "already exists"; it must look again instead
    from sqlalchemy.dialects.sqlite.base import SQLiteDialect

    path = str(tmp_path / "s.sqlite")
    PredictionLog(path)  # the other worker, first
    real, checks = SQLiteDialect.has_table, []

    def stale_first_check(self, *args, **kwargs):  # this worker's first look predates the other's tables
        checks.append(1)
        return False if len(checks) == 1 else real(self, *args, **kwargs)

    monkeypatch.setattr(SQLiteDialect, "has_table", stale_first_check)
    log = PredictionLog(path)
    log.write([_row(1)])
    assert log.request_ids() == {"r1"}


def _write_from_process(path: str, prefix: str, n: int) -> None:
    log = PredictionLog(path)
    for i in range(n):
        log.write([_row(i, prefix)])


def test_several_processes_write_the_same_log(tmp_path):
    path = str(tmp_path / "s.sqlite")
    PredictionLog(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_from_process, args=(path, f"p{k}-", 60)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(PredictionLog(path).request_ids()) == 180


def test_keys_are_hashed_verified_and_revoked(tmp_path):
    store = KeyStore(str(tmp_path / "s.sqlite"))
    token = store.create("team-a", rate_per_s=5, burst=10)
    key_id = token.split("_")[1]
    assert store.verify(token).name == "team-a"
    assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify("garbage") is None
    import sqlite3

    stored = (
        sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT secret_sha256 FROM api_keys").fetchone()[0]
    )
    assert token.split("_", 2)[2] not in stored and len(stored) == 64
    assert store.revoke(key_id).active is False
    assert store.verify(token) is None
    with pytest.raises(Exception, match="no API key"):
        store.revoke("000000000000")


@pytest.mark.parametrize(("fill_ms", "expected"), [(0.0, [[0], [1]]), (200.0, [[0, 1]])])
def test_fill_when_idle_waits_for_company_only_when_asked(fill_ms, expected):
    seen: list[list[int]] = []

    def record(items):
        seen.append(list(items))
        return items

    async def main():
        batcher = MicroBatcher(
            record, ThreadPoolExecutor(1), max_batch=8, max_wait_ms=5, fill_when_idle_ms=fill_ms
        )
        batcher.start()
        first = batcher.submit(0)
        await asyncio.sleep(0.05)  # the model is idle: without the fill window, item 0 has run by now
        await asyncio.gather(first, batcher.submit(1))
        await batcher.stop()

    _run(main())
    assert seen == expected
