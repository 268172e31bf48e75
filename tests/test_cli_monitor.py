"""`vlmops monitor run` on a real gateway's log: quiet on healthy traffic, exit 1 and an alert on a shift."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps
from typer.testing import CliRunner

from eval_data import write_manifest
from serve_helpers import b64
from vlmops.cli import app
from vlmops.models import load_model
from vlmops.registry.store import Registry
from vlmops.serve.app import create_app
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.log import PredictionLog

RULES = """
rules:
  - name: embedding drift
    metric: drift.mmd.p_value
    op: "<"
    threshold: 0.01
    min_samples: 20
"""


def send(client, paths, transform=None):
    for path in paths:
        image = Image.open(path).convert("RGB")
        if transform is not None:
            image = transform(image)
        buf = io.BytesIO()
        image.save(buf, "PNG")
        r = client.post("/v1/classify", json={"image": b64(buf.getvalue()), "labels": ["circle", "square"]})
        assert r.status_code == 200, r.text


def test_monitor_run_alerts_on_shifted_traffic(tmp_path):
    manifest = write_manifest(tmp_path / "shapes", per_class=10)
    paths = sorted((tmp_path / "shapes").glob("*.png"))
    store = str(tmp_path / "s.sqlite")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    gateway = Gateway(load_model("builtin:emoji-lit"), ServeConfig(store=store), PredictionLog(store), {})
    args = [
        "monitor",
        "run",
        "--reference-data",
        str(manifest),
        "--reference-split",
        "test",
        "--window",
        "40",
        "--rules",
        str(rules),
        "--store",
        store,
        "--no-progress",
    ]
    runner = CliRunner()
    with TestClient(create_app(gateway)) as client:
        send(client, paths)
        healthy = runner.invoke(app, [*args, "--json", str(tmp_path / "h.json")], catch_exceptions=False)
        assert healthy.exit_code == 0, healthy.output
        send(client, paths, lambda im: ImageOps.invert(im).rotate(90))
        registry = Registry(store)  # the served model is the canary; an alert on it must roll it back
        registry.register(gateway.version, "builtin:emoji-lit", "w")
        registry.set_alias("canary", gateway.version)
        shifted = runner.invoke(
            app, [*args, "--rollback-canary", "--json", str(tmp_path / "s.json")], catch_exceptions=False
        )
    assert shifted.exit_code == 1, shifted.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["alerts"][0]["rule"] == "embedding drift" and report["n"] == 40
    assert registry.alias("canary") is None
    assert registry.history("canary")[-1]["kind"] == "rollback"
    healthy_report = json.loads((tmp_path / "h.json").read_text())
    assert healthy_report["metrics"]["drift.mmd.p_value"] > 0.01
    assert healthy_report["metrics"]["drift.image_stats.drifted"] == 0.0  # same images, re-encoded
    assert "brightness" in report["results"]["image_stats"]["evidence"]["drifted"]  # inverted images
    history = runner.invoke(
        app, ["monitor", "history", "--store", store, "--json", str(tmp_path / "all.json")]
    )
    assert history.exit_code == 0
    assert len(json.loads((tmp_path / "all.json").read_text())["runs"]) == 2


def test_reference_queries_file_must_hold_enough_queries(tmp_path):
    from vlmops.cli.monitor import build_reference
    from vlmops.errors import VlmopsError

    manifest = write_manifest(tmp_path / "shapes", per_class=10)
    model = load_model("builtin:emoji-lit")
    queries = tmp_path / "queries.txt"
    queries.write_text("red circle\n\nblue square\n")
    store = str(tmp_path / "s.sqlite")
    with pytest.raises(VlmopsError, match=r"has 2 queries.*at least 20"):
        build_reference(model, str(manifest), "test", {}, None, store, False, queries)
    queries.write_text("\n".join(f"query {i}" for i in range(25)))
    reference = build_reference(model, str(manifest), "test", {}, None, store, False, queries)
    assert reference.query_emb.shape[0] == 25 and len(reference.image_stats) == len(reference.targets)
