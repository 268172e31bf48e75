"""Embedding on a private local Ray (Ray Data actor pool): same vectors as the local path, a killed
worker retried, progress shown, and not one connection outside loopback from any process Ray starts.

Every Ray process here runs under `ray_guard.Guard`: the network audit hook in each Python process and
strace on the whole tree. Ray is the `ray` extra that `make test` installs, so CI runs these.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval_data import write_manifest
from ray_guard import Guard

pytestmark = pytest.mark.ray
VLMOPS = shutil.which("vlmops", path=str(Path(sys.executable).parent)) or "vlmops"


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    """One guard for the module; every process it started is stopped at the end."""
    guard = Guard(tmp_path_factory.mktemp("ray-local"))
    yield guard
    guard.stop()


@pytest.fixture(scope="module")
def manifest(guard: Guard) -> Path:
    return write_manifest(guard.tmp / "shapes", per_class=8)


def assert_loopback_only(guard: Guard) -> None:
    assert guard.findings() == [], "a process Ray started touched a non-loopback address"
    if guard.use_strace:
        assert guard.loopback_connects() > 0, "strace saw no connect at all: it did not watch Ray"


def assert_nothing_left_running(guard: Guard, within: float = 30) -> None:
    deadline = time.time() + within
    while guard.ours() and time.time() < deadline:
        time.sleep(0.5)
    assert guard.ours() == [], "Ray processes outlived the command that started them"


def embedding(path: Path) -> np.ndarray:
    return np.stack(pd.read_parquet(path)["image_embedding"].to_numpy())


def test_guard_refuses_and_records_a_non_loopback_connect(tmp_path: Path) -> None:
    """The check is live: a guarded process asking for the cloud metadata address is caught."""
    guard = Guard(tmp_path)
    code = (
        "import socket\n"
        "try:\n    socket.create_connection(('169.254.169.254', 80), timeout=1)\n"
        "except PermissionError as exc:\n    print('refused:', exc)\n"
    )
    result = guard.run([sys.executable, "-c", code], "probe")
    assert "refused:" in result.stdout, result.stderr
    assert any("169.254.169.254" in finding for finding in guard.findings())


def test_embed_on_local_ray_equals_local(guard: Guard, manifest: Path) -> None:
    base = [VLMOPS, "embed", "-m", "builtin:emoji-lit", "-d", str(manifest), "-b", "8"]
    local = guard.run([*base, "-o", "local.parquet", "--store", "local.sqlite", "--no-progress"], "local")
    assert local.returncode == 0, local.stderr
    remote = guard.run(
        [*base, "-o", "ray.parquet", "--store", "ray.sqlite", "--json", "ray.json", "--ray", "local"],
        "embed-ray",
    )
    assert remote.returncode == 0, remote.stderr
    assert "private local Ray on 127.0.0.1" in remote.stderr
    assert "embedding images" in remote.stderr  # the progress bar, fed as Ray returns vectors
    stats = json.loads((guard.tmp / "ray.json").read_text())["images"]
    assert stats["misses"] == stats["unique"] > 0  # every image went through Ray, none from a cache
    assert_nothing_left_running(guard)  # the private Ray of --ray local ends with the command
    a, b = embedding(guard.tmp / "local.parquet"), embedding(guard.tmp / "ray.parquet")
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6
    rerun = [*base, "-o", "again.parquet", "--store", "ray.sqlite", "--json", "again.json", "--no-progress"]
    again = guard.run(rerun, "rerun")
    assert again.returncode == 0, again.stderr
    assert json.loads((guard.tmp / "again.json").read_text())["images"]["misses"] == 0  # cached by Ray's run
    assert_loopback_only(guard)


def test_killed_worker_is_retried_with_the_same_result(guard: Guard, manifest: Path) -> None:
    marker, out = guard.tmp / "killed.pid", guard.tmp / "crash.npz"
    code = "import sys, ray_helpers; ray_helpers.crash_job(*sys.argv[1:])"
    result = guard.run([sys.executable, "-c", code, str(out), str(marker), str(manifest)], "crash")
    assert result.returncode == 0, result.stderr
    assert marker.exists(), "no worker was killed: the test did not test a retry"
    arrays = np.load(out)
    assert np.abs(arrays["local"] - arrays["remote"]).max() <= 1e-6
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["cached"] == summary["stats"]["unique"] == summary["stats"]["misses"]
    actors = summary["ray"][
        "actors"
    ]  # what each actor did: every image counted once, by the batch that returned
    assert sum(a["images"] for a in actors) == summary["stats"]["misses"]
    assert all(a["cpu_ms_per_image"] > 0 and a["startup_cpu_s"] > 0 and a["busy_s"] > 0 for a in actors)
    assert 0.0 <= summary["ray"]["all_busy_fraction"] <= 1.0
    assert_loopback_only(guard)


def test_a_tasks_vectors_reach_the_caller_while_the_actor_works_on_the_next(
    guard: Guard, manifest: Path
) -> None:
    """Each finished task's vectors reach the caller (its store, its progress bar) at once, not when the
    next task has finished too (Ray Data's default prefetch held them back: the first 2.2 s into a 1-actor
    emoji job, not 1.35): the actor's second task waits for the caller to have the first's."""
    marker = guard.tmp / "first-result"
    code = "import sys, ray_helpers; ray_helpers.first_result_job(*sys.argv[1:])"
    result = guard.run([sys.executable, "-c", code, str(marker), str(manifest)], "first-result")
    assert result.returncode == 0, result.stderr
    events = marker.with_suffix(".log").read_text()
    assert marker.with_suffix(".seen").read_text() == "True", events  # not after the 20 s wait ran out
    assert_loopback_only(guard)


def test_generations_on_local_ray_equal_local_ones_derived_images_included(
    guard: Guard, manifest: Path
) -> None:
    out = guard.tmp / "generate.json"
    code = "import sys, ray_helpers; ray_helpers.generate_job(*sys.argv[1:])"
    result = guard.run([sys.executable, "-c", code, str(out), str(manifest)], "generate")
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    local, remote = summary["local"], summary["remote"]
    assert len(local) == len(remote) == 16 and len({g["text"] for g in local}) > 1
    for a, b in zip(local, remote, strict=True):
        assert (a["text"], a["token_ids"], a["finish_reason"]) == (
            b["text"],
            b["token_ids"],
            b["finish_reason"],
        )
        assert np.allclose(a["token_logprobs"], b["token_logprobs"], atol=1e-5)
    stats = summary["stats"]
    assert stats["n"] == 16 and stats["misses"] == stats["unique"] >= 4  # all made on Ray, none cached
    actors = summary["ray"]["actors"]
    assert sum(a["images"] for a in actors) == stats["misses"]  # every answer from an actor, counted once
    assert_loopback_only(guard)


def test_caption_eval_on_local_ray_equals_local(guard: Guard) -> None:
    from vlmops.data.emoji import load_emoji_manifest, manifest_path

    if not manifest_path().exists():
        pytest.skip("run `vlmops data fetch emoji` first")
    emoji = load_emoji_manifest()
    chosen = emoji[emoji["split"] == "test"].sample(12, random_state=0)
    data = guard.tmp / "captions.jsonl"
    rows = [{"id": r.id, "image": r.image, "texts": [r.name], "label": r.label} for r in chosen.itertuples()]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = [
        VLMOPS,
        "eval",
        "--task",
        "caption",
        "-d",
        str(data),
        "--suite",
        "quick",
        "--judge",
        "builtin:emoji-lit",
    ]
    local = guard.run([*base, "--store", "gl.sqlite", "--json", "gl.json", "--no-progress"], "geval-local")
    assert local.returncode == 0, local.stderr
    args = ["--store", "gr.sqlite", "--json", "gr.json", "--ray", "local", "--ray-min-items", "0"]
    remote = guard.run([*base, *args], "geval-ray")
    assert remote.returncode == 0, remote.stderr
    assert "embedding and generating with 2 actor(s)" in " ".join(remote.stderr.split())  # wrapped lines
    a, b = (json.loads((guard.tmp / name).read_text()) for name in ("gl.json", "gr.json"))
    assert b["generation"]["misses"] == 12
    assert a["items"] == b["items"] and a["examples"] == b["examples"]  # the same answers, item by item
    for key, value in a["headline"].items():
        if isinstance(value, float) and key != "tokens_per_s":
            assert value == pytest.approx(b["headline"][key], abs=1e-6, nan_ok=True), key
    assert_nothing_left_running(guard)
    assert_loopback_only(guard)


def test_bad_address_is_one_clear_error(guard: Guard, manifest: Path) -> None:
    result = guard.run(
        [VLMOPS, "embed", "-m", "builtin:emoji-lit", "-d", str(manifest), "-o", "x.parquet",
         "--store", "x.sqlite", "--ray", "127.0.0.1:1"],
        "bad-address",
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cannot join the Ray cluster at '127.0.0.1:1'" in result.stderr
    assert "Traceback" not in result.stderr
    assert_loopback_only(guard)


def test_a_job_after_warm_runs_its_actors_on_workers_started_and_imported_before_it(
    guard: Guard, manifest: Path
) -> None:
    """Issue 18: the actors of a job after `RayImageEmbedder.warm()` run in worker processes that were
    up, torch imported, before the job began (Ray's prestarted, preloaded workers), not new ones, and
    import nothing more before their model is loaded (what Ray needs to unpickle an actor included);
    they run at vlmops' niceness, Ray Data's own actors at Ray's; the private Ray's daemons run without
    metrics and task events, and the driver without usage statistics; the vectors stay the local path's."""
    from vlmops.scale.cluster import UNOBSERVED_ENV, USAGE_STATS_OFF
    from vlmops.scale.warm import POOL_NICENESS

    out = guard.tmp / "warm.npz"
    code = "import sys, ray_helpers; ray_helpers.warm_job(*sys.argv[1:])"
    # the driver's environment as in a user's shell: Ray's usage setting unset (the guard sets it)
    argv = [sys.executable, "-c", code, str(out), str(manifest)]
    result = guard.run(argv, "warm", unset=tuple(USAGE_STATS_OFF))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["asked"] == 2 and len(summary["warm"]) == 2, summary  # both up before the job
    actors = {int(a["pid"]) for a in summary["actors"]}
    assert actors and actors <= set(summary["warm"]), summary  # every actor that worked: a warm worker
    # modules an actor still imported itself: over 100 when the preload missed Ray Data's own (37 without
    # its actor-pool operator and pydantic v1); 1 now (the builtin text tower's package, a path lookup)
    assert all(0 <= a["startup_imports"] <= 3 for a in summary["actors"]), summary
    # pool workers at nice 0 (Ray's 15 cost their jobs 0-4 %); only they: Ray Data's actors keep Ray's
    assert set(summary["niceness"].values()) == {POOL_NICENESS}, summary
    assert summary["ray_data_niceness"] and all(
        n > POOL_NICENESS for n in summary["ray_data_niceness"].values()
    )
    # the private Ray records no metrics and no task events (nothing could read them)
    assert summary["daemon_env"] == {name: UNOBSERVED_ENV for name in ("raylet", "gcs_server")}, summary
    # usage statistics stay off in the driver through its jobs: Ray Data started neither its usage actor
    # nor its Prometheus poller (both did while the setting held only for ray.init)
    assert summary["ray_data_niceness"] and not any("Usage" in name for name in summary["ray_data_niceness"])
    assert "data-usage-metrics-poller" not in summary["driver_threads"], summary["driver_threads"]
    arrays = np.load(out)
    for name in ("first", "second"):
        assert np.abs(arrays[name] - arrays["local"]).max() <= 1e-6
    assert_loopback_only(guard)
