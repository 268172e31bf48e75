"""Embedding cache (SQLite, and Postgres where parametrised): hits and misses, keys, dims, exact round trips,
concurrent writers, interrupted runs."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from vlmops.config import get_settings
from vlmops.errors import StoreError
from vlmops.store.cache import MAX_VARIABLES, WITHOUT_ROWID_EMBEDDINGS, EmbeddingCache, open_cache
from vlmops.store.cache_pg import CHUNK
from vlmops.store.embed import (
    TEXT_TRANSFORM_ID,
    content_sha256,
    embed_images_cached,
    embed_texts_cached,
    text_sha256,
)


@pytest.fixture(scope="module")
def pg_server():
    """A throwaway PostgreSQL server for this module's Postgres cases."""
    from postgres_server import postgres

    with postgres() as url:
        yield url


_DATABASES = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """An empty store: a SQLite file, or a fresh database on the throwaway Postgres server."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite")
    from postgres_server import fresh_database

    return fresh_database(request.getfixturevalue("pg_server"), f"cache{next(_DATABASES)}")


@pytest.fixture
def cache(store_url):
    with open_cache(store_url) as store:
        yield store


@pytest.fixture
def paths(tmp_path, png_writer):
    """Five image paths; the last is a byte-identical copy of the first."""
    files = [png_writer(tmp_path / "img" / f"{i}.png", seed=i) for i in range(4)]
    shutil.copy(files[0], tmp_path / "img" / "copy.png")
    return [str(p) for p in [*files, tmp_path / "img" / "copy.png"]]


def test_first_call_misses_second_hits(cache, paths, fake_model):
    model = fake_model()
    first, stats = embed_images_cached(model, paths, cache, batch_size=2, progress=False)
    assert (stats.n, stats.unique, stats.hits, stats.misses) == (5, 4, 0, 4)
    assert model.image_batches == [2, 2]
    assert first.shape == (5, 8) and first.dtype == np.float32
    assert np.array_equal(first[0], first[4])
    again, stats = embed_images_cached(model, paths, cache, progress=False)
    assert (stats.hits, stats.misses) == (4, 0)
    assert model.image_batches == [2, 2]
    assert np.array_equal(first, again)
    assert cache.count() == 4 and cache.count("fake-1") == 4 and cache.count("other") == 0


def test_only_new_inputs_are_embedded(cache, paths, fake_model):
    model = fake_model()
    embed_images_cached(model, paths[:2], cache, progress=False)
    _, stats = embed_images_cached(model, paths, cache, progress=False)
    assert (stats.hits, stats.misses) == (2, 2)
    assert model.images_embedded == 4


def test_model_version_or_transform_change_misses(cache, paths, fake_model):
    embed_images_cached(fake_model(), paths, cache, progress=False)
    for model in (fake_model(version="fake-2"), fake_model(transform_id="fake-8px")):
        _, stats = embed_images_cached(model, paths, cache, progress=False)
        assert (stats.hits, stats.misses) == (0, 4)
        assert model.images_embedded == 4


def test_texts_cached(cache, fake_model):
    model = fake_model()
    texts = ["a cat", "a dog", "a cat"]
    first, stats = embed_texts_cached(model, texts, cache, progress=False)
    assert (stats.unique, stats.misses) == (2, 2) and model.text_batches == [2]
    second, stats = embed_texts_cached(model, [*texts, "a bird"], cache, progress=False)
    assert (stats.hits, stats.misses) == (2, 1) and model.text_batches == [2, 1]
    assert np.array_equal(first, second[:3])
    assert set(cache.get_many("fake-1", TEXT_TRANSFORM_ID, [text_sha256("a dog")])) == {text_sha256("a dog")}
    empty, stats = embed_texts_cached(model, [], cache, progress=False)
    assert empty.shape == (0, 8) and stats.n == 0


def test_vectors_round_trip_exactly_and_in_chunks(cache):
    rng = np.random.default_rng(0)
    n = max(MAX_VARIABLES, CHUNK) * 2 + 5  # several SELECT chunks on either database
    keys = [f"{i:064x}" for i in range(n)]
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    vectors[0, :3] = [np.float32(1e-38), np.float32(-0.0), np.float32(3.4e38)]
    cache.put_many("m", "t", dict(zip(keys, vectors, strict=True)))
    got = cache.get_many("m", "t", [*keys, "absent"])
    assert len(got) == n
    assert all(
        got[k].dtype == np.float32 and got[k].tobytes() == v.tobytes()
        for k, v in zip(keys, vectors, strict=True)
    )
    cache.put_many("m", "t", {keys[0]: np.zeros(16, np.float32)})  # INSERT OR IGNORE: first write wins
    assert np.array_equal(cache.get_many("m", "t", keys[:1])[keys[0]], vectors[0])


def test_dim_mismatch_is_a_clear_error(cache):
    cache.put_many("model-x", "t", {"a": np.ones(384, np.float32)})
    with pytest.raises(StoreError, match=r"has 384-d vectors for model model-x but got 512-d.*new store"):
        cache.put_many("model-x", "t2", {"b": np.ones(512, np.float32)})
    cache.put_many("model-y", "t", {"b": np.ones(512, np.float32)})  # other model versions are independent
    assert cache.delete_model("model-x") == 1 and cache.count() == 1


def test_mixed_sizes_and_corrupt_rows_are_clear_errors(cache, store_url):
    """One call with vectors of two sizes is refused whole; a stored row whose bytes do not match its
    dimension is named with the fix (both stores share `store.vectors`)."""
    with pytest.raises(StoreError, match=r"model m have mixed sizes \[3, 4\]"):
        cache.put_many("m", "t", {"a": np.ones(3), "b": np.ones(4)})
    assert cache.count() == 0
    cache.put_many("m", "t", {"a": np.ones(4)})
    truncate = "UPDATE embeddings SET vector = substr(vector, 1, 12)"
    if store_url.startswith("postgresql"):
        with sa.create_engine(store_url).begin() as conn:
            conn.execute(sa.text(truncate))
    else:
        with sqlite3.connect(store_url) as conn:
            conn.execute(truncate)
    with pytest.raises(StoreError, match=r"corrupt vector for a in .*; delete .* and re-embed"):
        cache.get_many("m", "t", ["a"])


def test_interrupted_run_keeps_finished_batches(cache, paths, fake_model):
    failing = fake_model(fail_on_batch=2)
    with pytest.raises(RuntimeError, match="batch 2"):
        embed_images_cached(failing, paths, cache, batch_size=2, progress=False)
    assert cache.count() == 2
    model = fake_model()
    _, stats = embed_images_cached(model, paths, cache, batch_size=2, progress=False)
    assert (stats.hits, stats.misses) == (2, 2) and model.images_embedded == 2


def _vector(key: int) -> np.ndarray:
    return np.full(4, key, dtype=np.float32)


def _writer(path: str, first: int, barrier) -> None:
    """Open the store together with the others, then write keys first..first+99 in batches of 10."""
    barrier.wait(timeout=60)
    with open_cache(path) as store:
        for start in range(first, first + 100, 10):
            store.put_many("m", "t", {f"k{i}": _vector(i) for i in range(start, start + 10)})


def test_concurrent_writers(store_url):
    """Four processes write overlapping keys at once (SQLite file or Postgres): every key once, intact."""
    path = store_url
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(path, 50 * i, barrier)) for i in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    with open_cache(path) as store:
        assert store.count() == 250
        got = store.get_many("m", "t", [f"k{i}" for i in range(250)])
        assert all(np.array_equal(got[f"k{i}"], _vector(i)) for i in range(250))
    from vlmops.store.log import make_engine

    engine = make_engine(path)
    with engine.connect() as conn:
        query = "SELECT COUNT(DISTINCT content_sha256), COUNT(*) FROM embeddings"
        rows = tuple(conn.execute(sa.text(query)).one())
    engine.dispose()
    assert rows == (250, 250)


def test_wal_mode_and_hashes(tmp_path, paths):
    EmbeddingCache(tmp_path / "w.sqlite").close()
    conn = sqlite3.connect(tmp_path / "w.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    data = Path(paths[0]).read_bytes()
    assert content_sha256(paths[0]) == content_sha256(data) == content_sha256(paths[4])
    assert text_sha256("a") != text_sha256("b")


def test_open_cache_urls(tmp_path, monkeypatch):
    with open_cache(f"sqlite:///{tmp_path}/a.sqlite") as store:
        assert store.path == tmp_path / "a.sqlite"
    with open_cache(str(tmp_path / "b.sqlite")) as store:
        assert store.path.exists()
    with pytest.raises(StoreError, match="write it as postgresql://"):
        open_cache("postgres://user@host/db")
    with pytest.raises(StoreError, match="cannot open the embedding store at postgresql"):
        open_cache("postgresql+psycopg://user@127.0.0.1:1/db")  # nothing listens on port 1
    with pytest.raises(StoreError, match="unknown scheme 'redis'"):
        open_cache("redis://host")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable"):
        EmbeddingCache(tmp_path / "junk.sqlite")
    monkeypatch.setenv("VLMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VLMOPS_STORE_URL", raising=False)
    try:
        get_settings(fresh=True)
        with open_cache() as store:
            assert store.path == tmp_path / "home" / "store.sqlite"
    finally:
        monkeypatch.undo()
        get_settings(fresh=True)


def test_known_content_keys_skip_rehashing(cache, paths, fake_model):
    from vlmops.errors import VlmopsError

    model = fake_model()
    first, _ = embed_images_cached(model, paths, cache, progress=False)
    keys = [content_sha256(p) for p in paths]
    again, stats = embed_images_cached(model, paths, cache, progress=False, content_keys=keys)
    assert stats.hits == stats.unique and np.array_equal(first, again)
    with pytest.raises(VlmopsError, match="content keys for"):
        embed_images_cached(model, paths, cache, progress=False, content_keys=keys[:-1])


def test_a_log_from_an_older_vlmops_gains_new_columns_and_keeps_its_rows(tmp_path):
    from vlmops.store.log import PredictionLog, PredictionRow

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # the requests table as vlmops 0.x created it, with one row
        conn.execute(
            "CREATE TABLE requests (request_id VARCHAR(64) PRIMARY KEY, time FLOAT NOT NULL, "
            "endpoint VARCHAR(32) NOT NULL, key_id VARCHAR(32), model_version VARCHAR(128) NOT NULL, "
            "input_sha256 TEXT NOT NULL, dim INTEGER, embedding BLOB, prediction TEXT, confidence FLOAT, "
            "latency_ms FLOAT NOT NULL, texts TEXT)"
        )
        conn.execute(
            "INSERT INTO requests VALUES "
            "('old', 1.0, 'classify', NULL, 'v1', '[]', NULL, NULL, NULL, NULL, 2.0, NULL)"
        )
    log = PredictionLog(str(path))
    log.write([PredictionRow("new", "classify", "v1", [], 3.0, image_stats=[{"width": 4}])])
    old, new = log.requests()
    assert old.request_id == "old" and old.image_stats is None
    assert new.image_stats == '[{"width": 4}]'


def test_chat_exchanges_are_written_with_their_request_row_and_take_feedback(tmp_path):
    import json

    from vlmops.store.log import ChatExchange, PredictionLog, PredictionRow

    log = PredictionLog(str(tmp_path / "log.sqlite"))
    row = PredictionRow("r1", "chat", "cap@1", ["ab" * 32], 12.5, key_id=None, image_stats=[{"width": 72}])
    chat = ChatExchange(
        "r1", "local", "builtin:emoji-captioner", [{"role": "user", "text": "Describe this emoji."}],
        "grinning face", tokens_in=5, tokens_out=2, ttft_ms=3.0, params={"temperature": 0.0},
    )  # fmt: skip
    log.write_chat([(row, chat)])
    (got,) = log.chats()
    assert (got.request_id, got.endpoint, got.answer, got.status) == ("r1", "chat", "grinning face", "ok")
    assert json.loads(got.prompt)[0]["text"] == "Describe this emoji." and got.latency_ms == 12.5
    assert log.request_owner("r1") is not None  # feedback binds to chat requests like any other
    log.add_feedback("r1", False, "grinning face with big eyes", None, rating=2.0)
    (fb,) = log.feedback()
    assert (fb.label, fb.rating) == ("grinning face with big eyes", 2.0)
    with pytest.raises(StoreError, match="paired"):
        log.write_chat([(PredictionRow("r2", "chat", "cap@1", [], 1.0), chat)])
    assert [r.request_id for r in log.requests()] == ["r1"]  # nothing half-written


def test_a_new_store_keeps_its_vectors_in_a_rowid_table(tmp_path: Path) -> None:
    """The vectors (~1.5 KB each) go into the table's own B-tree, not into the key's: 2.7-3.1x faster
    writes and 2.8-3.3x faster reads (bench/cache_layout.py)."""
    EmbeddingCache(tmp_path / "new.db").close()
    with sqlite3.connect(tmp_path / "new.db") as conn:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'embeddings'").fetchone()
        indexes = conn.execute(
            "SELECT name FROM sqlite_master WHERE tbl_name = 'embeddings' AND type = 'index'"
        )
        assert "WITHOUT ROWID" not in sql.upper() and len(indexes.fetchall()) == 1  # the key's index


@pytest.mark.parametrize("older", [True, False], ids=["without-rowid-store", "rowid-store"])
def test_a_store_of_either_layout_reads_writes_and_deletes_the_same(tmp_path: Path, older: bool) -> None:
    """A store made before the rowid layout keeps working as it is: the first vector written for a key
    wins, lookups return exact bytes, counts and deletes are per model."""
    path = tmp_path / "store.db"
    if older:
        with sqlite3.connect(path) as conn:
            conn.execute(WITHOUT_ROWID_EMBEDDINGS)
    cache = EmbeddingCache(path)
    rng = np.random.default_rng(0)
    first = {f"k{i:03d}": rng.standard_normal(384).astype(np.float32) for i in range(300)}
    cache.put_many("m1", "t", first)
    cache.put_many("m1", "t", {"k000": np.zeros(384, dtype=np.float32)})  # already there: ignored
    cache.put_many("m2", "t", {"k000": np.ones(384, dtype=np.float32)})
    found = cache.get_many("m1", "t", [*first, "missing"])
    assert set(found) == set(first) and all(np.array_equal(found[k], first[k]) for k in first)
    assert cache.count("m1") == 300 and cache.count() == 301
    assert cache.delete_model("m1") == 300 and cache.get_many("m1", "t", list(first)) == {}
    assert np.array_equal(cache.get_many("m2", "t", ["k000"])["k000"], np.ones(384, dtype=np.float32))
    cache.close()
    with sqlite3.connect(path) as conn:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'embeddings'").fetchone()
    assert ("WITHOUT ROWID" in sql) == older  # the store kept the layout it had
