"""The store's image backend hook (what `--ray` plugs into) and the Ray helpers that need no Ray running."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from vlmops.errors import VlmopsError
from vlmops.scale.cluster import (
    BOOTSTRAP_CONFIG,
    RayClusterError,
    _check_reachable,
    is_loopback_address,
    loopback_env,
    resolve_address,
)
from vlmops.scale.embed import RayImageEmbedder
from vlmops.scale.generate import RayGenerator
from vlmops.scale.loopback_node import _flag
from vlmops.scale.pool import check_pool_room
from vlmops.store.cache import EmbeddingCache
from vlmops.store.embed import embed_images_cached, use_image_backend


class ReversedBackend:
    """Embeds here, but returns the chunks last-first (as a cluster may): the caller must reorder."""

    def __init__(self, chunk: int = 2, drop: int = 0) -> None:
        self.chunk, self.drop = chunk, drop
        self.items: list[tuple[str, str]] = []

    def embed_files(self, model, items: Sequence[tuple[str, str]], batch_size: int):
        from vlmops.data.images import load_image

        self.items = list(items)
        kept = list(items)[self.drop :]
        chunks = [kept[i : i + self.chunk] for i in range(0, len(kept), self.chunk)]
        for chunk in reversed(chunks):
            keys = [key for key, _ in chunk]
            yield keys, model.embed_images([load_image(path) for _, path in chunk])


@pytest.fixture
def images(tmp_path: Path, png_writer) -> list[Path]:
    paths = [png_writer(tmp_path / f"{i}.png", seed=i) for i in range(7)]
    return [*paths, paths[0]]  # a repeated file is embedded once


def test_backend_gets_only_the_misses_and_results_keep_input_order(fake_model, images, tmp_path) -> None:
    model = fake_model()
    expected, _ = embed_images_cached(model, images, EmbeddingCache(":memory:"), progress=False)
    cache = EmbeddingCache(tmp_path / "store.sqlite")
    embed_images_cached(model, images[:3], cache, progress=False)  # three already cached
    backend = ReversedBackend()
    with use_image_backend(backend):
        vectors, stats = embed_images_cached(model, images, cache, batch_size=2, progress=False)
    assert [Path(path) for _, path in backend.items] == images[3:7]  # misses only, each once
    assert (stats.hits, stats.misses, stats.unique, stats.n) == (3, 4, 7, 8)
    np.testing.assert_array_equal(vectors, expected)
    assert cache.count() == 7  # the backend's vectors went into the shared cache


def test_without_the_block_embedding_is_local_again(fake_model, images) -> None:
    backend = ReversedBackend()
    with use_image_backend(backend):
        pass
    embed_images_cached(fake_model(), images, EmbeddingCache(":memory:"), progress=False)
    assert backend.items == []


def test_a_backend_that_loses_items_is_an_error_and_keeps_what_came_back(fake_model, images) -> None:
    cache = EmbeddingCache(":memory:")
    with use_image_backend(ReversedBackend(drop=2)), pytest.raises(VlmopsError, match="2 of 7 images"):
        embed_images_cached(fake_model(), images, cache, progress=False)
    assert cache.count() == 5  # the vectors that did arrive are kept


def test_addresses() -> None:
    assert resolve_address(None) == "local"
    assert resolve_address("auto") == "auto"
    assert is_loopback_address("127.0.0.2:6379") and is_loopback_address("localhost:1")
    assert not is_loopback_address("10.0.0.5:6379") and not is_loopback_address("auto")
    assert _flag(["start", "--node-ip-address", "127.0.0.3"], "--node-ip-address") == "127.0.0.3"
    assert _flag(["--node-ip-address=127.0.0.4"], "--node-ip-address") == "127.0.0.4"


def test_address_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("VLMOPS_RAY_ADDRESS", "127.0.0.2:6390")
    assert resolve_address(None) == "127.0.0.2:6390"


def test_loopback_env_prevents_the_cloud_probe(tmp_path: Path) -> None:
    env = loopback_env(tmp_path / "home")
    assert (tmp_path / "home" / "ray_bootstrap_config.yaml").read_text() == BOOTSTRAP_CONFIG
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert is_loopback_address(env["RAY_USAGE_STATS_REPORT_URL"].removeprefix("http://").rstrip("/"))


def test_nothing_listening_is_a_clear_error_in_seconds() -> None:
    with pytest.raises(RayClusterError, match="nothing answers there"):
        _check_reachable("127.0.0.1:1", timeout=2)


def test_pool_options_are_checked() -> None:
    with pytest.raises(VlmopsError, match="--ray-actors"):
        RayImageEmbedder(actors=0)
    with pytest.raises(VlmopsError, match="--ray-cpus-per-actor"):
        RayImageEmbedder(cpus_per_actor=0)
    with pytest.raises(VlmopsError, match="4 CPUs, but the Ray cluster has 2"):
        check_pool_room(actors=2, cpus_per_actor=2, cpus=2.0)
    with pytest.raises(VlmopsError, match="--ray-actors"):
        RayGenerator(actors=0)  # the generation pool checks the same options


def test_kuberay_manifest_keeps_usage_stats_off_and_the_probe_away() -> None:
    import yaml

    root = Path(__file__).resolve().parents[1]
    docs = {d["kind"]: d for d in yaml.safe_load_all((root / "deploy" / "kuberay.yaml").read_text())}
    assert yaml.safe_load(docs["ConfigMap"]["data"]["ray_bootstrap_config.yaml"]) == yaml.safe_load(
        BOOTSTRAP_CONFIG
    )
    spec = docs["RayCluster"]["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert any(m["mountPath"].endswith("/ray_bootstrap_config.yaml") for m in head["volumeMounts"])
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        env = {e["name"]: e["value"] for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_USAGE_STATS_ENABLED"] == "0"
        assert group["rayStartParams"]["disable-usage-stats"] == "true"
        assert env["RAY_preload_python_modules"] == "vlmops._preload"  # warm pool workers (issue 18)
    egress = docs["NetworkPolicy"]["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert "169.254.169.254/32" in egress["except"]


def test_kuberay_service_builds_the_gateway_app_with_the_settings_of_the_cluster() -> None:
    import importlib

    import yaml

    pytest.importorskip("ray.serve")
    root = Path(__file__).resolve().parents[1]
    docs = {d["kind"]: d for d in yaml.safe_load_all((root / "deploy" / "kuberay-service.yaml").read_text())}
    spec = docs["RayService"]["spec"]
    (application,) = yaml.safe_load(spec["serveConfigV2"])["applications"]
    module, _, name = application["import_path"].partition(":")
    built = getattr(importlib.import_module(module), name)(application["args"])
    scaling = built._bound_deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (2, 8)
    cluster = spec["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = {e["name"]: e["value"] for e in group["template"]["spec"]["containers"][0]["env"]}
        assert (
            env["RAY_USAGE_STATS_ENABLED"] == "0" and group["rayStartParams"]["disable-usage-stats"] == "true"
        )
        assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "vlmops.scale.serve:proxy_middlewares"
    egress = docs["NetworkPolicy"]["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert "169.254.169.254/32" in egress["except"]


def test_the_serve_config_builder_refuses_unknown_args_and_an_unshared_store(tmp_path) -> None:
    pytest.importorskip("ray.serve")
    from vlmops.serve.ray_app import app

    with pytest.raises(VlmopsError, match="unknown args replica_count"):
        app({"replica_count": 2})
    with pytest.raises(VlmopsError, match="postgresql://"):
        app({"store": str(tmp_path / "s.sqlite"), "replicas": 2})


@pytest.mark.parametrize("pool_worker", [True, False])
def test_the_preload_module_imports_the_pools_modules_in_pool_workers_only(pool_worker: bool) -> None:
    """Every worker of a node vlmops starts imports `vlmops._preload`: a pool's worker (its runtime_env
    sets the variable) gets ray.data and torch before its first task, Ray Data's and Serve's own
    actors nothing heavy (issue 18: preloading torch in all of them slowed Ray's start by ~4 s)."""
    import json
    import os
    import subprocess
    import sys

    from vlmops._preload import POOL_MODULES, POOL_WORKER_ENV
    from vlmops.scale.warm import PRELOAD_MODULE, pool_runtime_env

    assert pool_runtime_env()["env_vars"][POOL_WORKER_ENV] == "1"
    env = {k: v for k, v in os.environ.items() if k != POOL_WORKER_ENV}
    if pool_worker:
        env[POOL_WORKER_ENV] = "1"
    code = f"import importlib, json, sys; importlib.import_module({PRELOAD_MODULE!r}); "
    code += f"print(json.dumps([m in sys.modules for m in {list(POOL_MODULES)!r}]))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [pool_worker] * len(POOL_MODULES)


def test_pool_workers_get_vlmops_niceness_and_none_keeps_rays(monkeypatch) -> None:
    import vlmops.scale.warm as warm
    from vlmops._preload import POOL_WORKER_ENV

    assert warm.pool_runtime_env() == {"env_vars": {POOL_WORKER_ENV: "1", warm.NICENESS_ENV: "0"}}
    monkeypatch.setattr(warm, "POOL_NICENESS", None)
    assert warm.pool_runtime_env() == {"env_vars": {POOL_WORKER_ENV: "1"}}


def test_preload_env_adds_the_pools_module_to_the_users_own(monkeypatch) -> None:
    from vlmops.scale.warm import PRELOAD_ENV, PRELOAD_MODULE, preload_env

    monkeypatch.delenv(PRELOAD_ENV, raising=False)
    assert preload_env() == {PRELOAD_ENV: PRELOAD_MODULE}
    monkeypatch.setenv(PRELOAD_ENV, "numpy")
    assert preload_env() == {PRELOAD_ENV: f"numpy,{PRELOAD_MODULE}"}
    monkeypatch.setenv(PRELOAD_ENV, f"numpy,{PRELOAD_MODULE}")
    assert preload_env() == {PRELOAD_ENV: f"numpy,{PRELOAD_MODULE}"}  # not twice
