"""How a Ray embedding job is cut into tasks: several model batches per Ray Data task (each task costs
~50 ms of CPU outside the model: the driver's, the raylet's, the actor's), more for larger jobs, model
batches no larger than the caller's batch size, the vectors those of the local path, and small jobs
still spread over every actor. No Ray processes: the actor class is called directly."""

from __future__ import annotations

import numpy as np
import pytest

from vlmops.scale.embed import EmbedActor
from vlmops.scale.pool import BATCHES_PER_TASK, ROWS_IN_FLIGHT, rows_per_task, task_sizes
from vlmops.store.cache import EmbeddingCache
from vlmops.store.embed import embed_images_cached


def test_one_actor_call_embeds_a_task_in_the_callers_model_batches(fake_model, png_writer, tmp_path) -> None:
    paths = [str(png_writer(tmp_path / f"{i}.png", seed=i)) for i in range(21)]
    model = fake_model()
    actor = EmbedActor("fake:test", model.info.version, threads=1, loader=lambda uri: model, batch_size=8)
    out = actor({"key": np.array(paths), "path": np.array(paths)})  # one Ray Data task of 21 rows

    assert model.image_batches == [8, 8, 5]  # the model never sees more than the caller's batch
    local, _ = embed_images_cached(fake_model(), paths, EmbeddingCache(":memory:"), 8, progress=False)
    assert out["vector"].dtype == np.float32 and np.array_equal(out["vector"], local)
    assert list(out["key"]) == paths
    stats = out["stats"]  # one row per image, all the task's: (pid, start, end, cpu, images, ...)
    assert stats.shape == (21, 8) and (stats[:, 4] == 21).all() and (stats == stats[0]).all()


def test_a_task_holds_several_batches_and_a_small_job_still_feeds_every_actor() -> None:
    for items, batch, actors in [(100, 8, 2), (300, 64, 2), (1, 64, 1), (2_000, 64, 4)]:
        per_task = rows_per_task(items, batch, actors)
        assert per_task % batch == 0 and per_task >= batch  # whole model batches
        tasks = -(-items // per_task)
        assert tasks >= min(actors, -(-items // batch)), (items, batch, actors, per_task)


def test_tasks_grow_with_the_job_to_many_batches_while_the_tail_stays_short() -> None:
    """Each task costs ~50 ms of CPU outside the model (driver, raylet, actor): a large job runs tasks
    of many batches (100,000 images on 2 actors: 98 tasks of 16 batches, not 391 of 4), a smaller one
    smaller tasks, so that the job's tail (the last task or two of one actor) stays a small share."""
    assert BATCHES_PER_TASK >= 16
    assert rows_per_task(100_000, 64, 2) == rows_per_task(1_000_000, 64, 2) == 64 * BATCHES_PER_TASK
    sizes = [rows_per_task(items, 64, 2) for items in (1_000, 3_000, 14_851, 30_000, 100_000)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert rows_per_task(14_851, 64, 2) >= 8 * 64  # the emoji set: ~30 tasks, not 59
    for items, actors in [(3_000, 2), (14_851, 2), (14_851, 1), (20_000, 2), (100_000, 2)]:
        share = items / actors
        assert share / rows_per_task(items, 64, actors) >= 6, (items, actors)  # >= 6 tasks per actor


def test_a_jobs_last_tasks_shrink_to_a_batch_so_the_actors_finish_together() -> None:
    """Guided self-scheduling: full tasks (`rows_per_task`) while much is left, then each a whole number
    of batches about 1/(2 x actors) of what is left, down to one batch; the last takes the remainder."""
    jobs = [(14_851, 64, 2), (14_851, 64, 1), (100_000, 64, 2), (3_000, 64, 4), (130, 8, 2)]
    for items, batch, actors in jobs:
        sizes = task_sizes(items, batch, actors)
        largest = rows_per_task(items, batch, actors)
        assert sum(sizes) == items and sizes[-1] < 2 * batch
        assert sizes[:-1] == sorted(sizes[:-1], reverse=True) and max(sizes) <= largest
        left = items
        for size in sizes[:-1]:
            assert size == min(largest, -(-left // (2 * actors * batch)) * batch), (items, sizes)
            left -= size
    emoji = task_sizes(14_851, 64, 2)  # was 30 tasks of 512 (the last 3)
    assert emoji[:26] == [512] * 26 and emoji[26:] == [448, 320, 256, 192, 128, 64, 64, 67]
    assert task_sizes(0, 64, 2) == [] and task_sizes(5, 64, 2) == [5]


def test_the_tasks_blocks_hold_the_rows_in_order_and_in_those_sizes() -> None:
    from vlmops.scale.pool import _blocks

    rows = [{"key": f"k{i}", "path": f"/p/{i}.png"} for i in range(300)]
    blocks = _blocks(rows, task_sizes(300, 16, 2))
    assert [block.num_rows for block in blocks] == task_sizes(300, 16, 2)
    assert [row for block in blocks for row in block.to_pylist()] == rows


def test_generation_tasks_stay_small_where_a_row_costs_far_more_than_a_task() -> None:
    from vlmops.scale.generate import GENERATE_TASK_COST_ROWS

    for items, batch in [(1_000, 8), (10_000, 4), (100, 8)]:
        per_task = rows_per_task(items, batch, 2, GENERATE_TASK_COST_ROWS)
        assert per_task % batch == 0 and per_task <= max(batch, items / 2 / 50)  # >= 50 tasks per actor
        assert per_task <= rows_per_task(items, batch, 2)  # never larger than an embedding task
    assert rows_per_task(10_000, 4, 2, GENERATE_TASK_COST_ROWS) < rows_per_task(10_000, 4, 2)


def test_each_actor_has_about_rows_in_flight_queued_in_whole_tasks() -> None:
    """With one 64-image batch per task, Ray Data's default of 2 tasks left the actors idle between
    batches (bench/RESULTS.md, issue 18); bigger tasks need fewer in flight for the same rows."""
    pytest.importorskip("ray")
    from vlmops.scale.pool import pool_strategy

    for per_task, in_flight in [(64, ROWS_IN_FLIGHT // 64), (256, ROWS_IN_FLIGHT // 256), (4096, 2)]:
        strategy = pool_strategy(2, per_task)
        assert strategy.min_size == strategy.max_size == 2
        assert strategy.max_tasks_in_flight_per_actor == max(2, in_flight)
    assert pool_strategy(2, 64).max_tasks_in_flight_per_actor >= 8  # the measured fix stays
