"""`vlmops keys`, `vlmops index build`, `vlmops calibrate`, and the server's use of their outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from eval_data import write_manifest
from serve_helpers import b64
from vlmops.cli import app
from vlmops.models import load_model
from vlmops.serve.app import create_app
from vlmops.serve.build import build_gateway
from vlmops.serve.resources import Calibration, Gallery, ResourceError
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.log import PredictionLog


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("shapes"), per_class=10)


def test_keys_create_list_revoke(tmp_path):
    store = str(tmp_path / "s.sqlite")
    out = tmp_path / "key.json"
    assert (
        invoke(
            "keys", "create", "--name", "team-a", "--rate", "5", "--store", store, "--json", str(out)
        ).exit_code
        == 0
    )
    created = json.loads(out.read_text())
    assert created["key"].startswith(f"vlm_{created['key_id']}_")
    listed = tmp_path / "list.json"
    invoke("keys", "list", "--store", store, "--json", str(listed))
    (row,) = json.loads(listed.read_text())
    assert row["name"] == "team-a" and row["active"] and "secret" not in json.dumps(row)
    assert invoke("keys", "revoke", created["key_id"], "--store", store).exit_code == 0
    invoke("keys", "list", "--store", store, "--json", str(listed))
    assert json.loads(listed.read_text())[0]["active"] is False
    bad = invoke("keys", "revoke", "nope", "--store", store)
    assert bad.exit_code == 2 and "no API key" in bad.output
    assert invoke("keys", "create", "--name", " ", "--store", store).exit_code == 2


def test_index_build_then_search_finds_the_image_itself(manifest, tmp_path):
    out = tmp_path / "gallery"
    result = invoke(
        "index",
        "build",
        "--data",
        str(manifest),
        "--out",
        str(out),
        "--no-progress",
        "--store",
        str(tmp_path / "s.sqlite"),
    )
    assert result.exit_code == 0, result.output
    gallery = Gallery.load(out)
    assert len(gallery.ids) == 40 and gallery.labels[0] == "round/red circle"
    hits = gallery.search(gallery.embeddings[7], 3)
    assert hits[0][0] == 7 and hits[0][1] == pytest.approx(1.0, abs=1e-5)


def test_calibrated_sets_cover_the_calibration_data(manifest, tmp_path):
    out = tmp_path / "cal.json"
    result = invoke(
        "calibrate",
        "--data",
        str(manifest),
        "--split",
        "test",
        "--alpha",
        "0.2",
        "--name",
        "shapes",
        "--out",
        str(out),
        "--no-progress",
        "--store",
        str(tmp_path / "s.sqlite"),
    )
    assert result.exit_code == 0, result.output
    cal = Calibration.load(out)
    assert sorted(cal.labels) == ["blue circle", "green square", "red circle", "red square"]
    assert cal.temperature > 0 and 0 <= cal.threshold <= 1 and cal.n == 40
    model = load_model("builtin:emoji-lit")
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    gateway = Gateway(
        model,
        ServeConfig(store=url, template=cal.template),
        PredictionLog(url),
        {"shapes": cal.label_set_()},
        cal,
    )
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    covered = 0
    with TestClient(create_app(gateway)) as client:
        for row in rows:
            image = (manifest.parent / row["image"]).read_bytes()
            body = client.post("/v1/classify", json={"image": b64(image), "label_set": "shapes"}).json()
            assert body["calibrated"] is True
            assert set(body["prediction_set"]) >= {
                t["label"] for t in body["top_k"] if t["probability"] >= 1 - cal.threshold
            }
            covered += row["label"].split("/")[-1] in body["prediction_set"]
    assert covered / len(rows) >= 1 - cal.alpha  # split conformal guarantees this in-sample


def test_server_refuses_resources_of_another_model(manifest, tmp_path):
    gallery = Gallery(
        "another-model-v9", ["a"], [None], [None], load_model("builtin:emoji-lit").embed_texts(["x"])
    )
    gallery.save(tmp_path / "g")
    with pytest.raises(ResourceError, match="another-model-v9"):
        build_gateway(ServeConfig(gallery=str(tmp_path / "g"), store=str(tmp_path / "s.sqlite")))


def test_serve_help_lists_the_options():
    result = invoke("serve", "--help")
    assert result.exit_code == 0
    for option in (
        "--runtime",
        "--max-batch",
        "--max-wait-ms",
        "--queue",
        "--workers",
        "--gallery",
        "--insecure-no-auth",
        "--key-items-per-s",
        "--key-items-in-flight",
        "--pixels-in-flight",
    ):
        assert option in result.output


def test_serve_on_a_port_in_use_fails_at_once_without_loading_the_model(tmp_path, monkeypatch):
    import socket

    import vlmops.serve.build as build

    def no_loading(*_a, **_k):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(build, "build_app", no_loading)
    monkeypatch.setattr(build, "build_gateway", no_loading)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            app, ["serve", "--port", str(port), "--store", str(tmp_path / "s.sqlite"), "--insecure-no-auth"]
        )
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(port) in lines[0] and "--port" in lines[0], result.output
    assert "serving" not in result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--ray-replicas", "2"], ["SQLite", "postgresql://", "--ray-replicas 1"]),
        (["--ray-autoscale", "1:3"], ["SQLite", "postgresql://"]),
        (["--ray-autoscale", "3:1"], ["--ray-autoscale", "MIN:MAX"]),
        (["--workers", "2"], ["--workers", "--ray-replicas"]),
    ],
)
def test_serve_on_ray_refuses_bad_options_before_starting_ray(tmp_path, monkeypatch, args, words):
    import vlmops.scale.serve as ray_serve

    def no_ray(*_a, **_k):
        raise AssertionError("Ray was started before the options were checked")

    monkeypatch.setattr(ray_serve, "serve_on_ray", no_ray)
    store = str(tmp_path / "s.sqlite")
    result = CliRunner().invoke(app, ["serve", "--ray", "local", "--store", store, "--port", "0", *args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and all(word in result.output for word in words), result.output


def test_a_replica_plan_becomes_serves_deployment_options():
    pytest.importorskip("ray.serve")
    from vlmops.scale.serve import ReplicaPlan, deployment

    fixed = deployment(ReplicaPlan(replicas=3, cpus=0.5, max_ongoing=64))._deployment_config
    assert fixed.num_replicas == 3 and fixed.max_ongoing_requests == 64
    scaled = deployment(ReplicaPlan(replicas=2, autoscale=(1, 4)))._deployment_config.autoscaling_config
    assert (scaled.min_replicas, scaled.initial_replicas, scaled.max_replicas) == (1, 2, 4)


def test_a_deployments_replicas_share_one_metrics_folder_of_their_own():
    pytest.importorskip("ray.serve")
    from vlmops.scale.serve import ReplicaPlan, deployment

    def folder(dep) -> str:
        return dep.ray_actor_options["runtime_env"]["env_vars"]["PROMETHEUS_MULTIPROC_DIR"]

    plan = ReplicaPlan(replicas=2)
    first, second = folder(deployment(plan)), folder(deployment(plan))
    assert first != second and "vlmops-serve-metrics-" in first  # a fresh one per deployment
    assert folder(deployment(plan, "/tmp/given")) == "/tmp/given"


def test_a_running_serve_with_its_proxy_elsewhere_is_refused_by_name(monkeypatch):
    pytest.importorskip("ray.serve")
    from types import SimpleNamespace

    import ray.serve.context

    from vlmops.scale.serve import RayServeError, _check_proxy_address

    running = SimpleNamespace(http_config=SimpleNamespace(host="127.0.0.1", port=8000))
    monkeypatch.setattr(ray.serve.context, "_get_global_client", lambda: running)
    _check_proxy_address("127.0.0.1", 8000)
    with pytest.raises(RayServeError, match=r"--host 127\.0\.0\.1 --port 8000"):
        _check_proxy_address("127.0.0.1", 9000)
