"""Lineage: the registry records the data a version was trained on, bundles carry it, and the
dashboard's realised accuracy counts the feedback that arrived after a monitoring pass."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from onnx_helpers import save_tiny_model
from test_monitor_run import DIM, K, Reference, draw, log_window, unit
from vlmops.models.builtin import WEIGHTS_DIR
from vlmops.monitor.dashboard import dashboard_context
from vlmops.monitor.run import run_monitor
from vlmops.registry.store import Registry, versions
from vlmops.store.log import PredictionLog


def _card_train_version(folder) -> str:
    return json.loads((folder / "emoji-lit.json").read_text())["data"]["train_version"]


def test_register_records_the_training_data_version_from_the_card(tmp_path):
    registry = Registry(str(tmp_path / "s.sqlite"), artifacts=tmp_path / "artifacts")
    shipped = registry.register("shipped", "builtin:emoji-lit", "sha-1")
    assert shipped["data_version"] == _card_train_version(WEIGHTS_DIR)
    # a model trained elsewhere: its own card's data version, not the shipped one
    folder = tmp_path / "trained"
    shutil.copytree(WEIGHTS_DIR, folder)
    card = json.loads((folder / "emoji-lit.json").read_text())
    card["data"]["train_version"] = "f" * 64
    (folder / "emoji-lit.json").write_text(json.dumps(card))
    trained = registry.register("trained", f"builtin:emoji-lit@{folder}", "sha-2", parent="shipped")
    assert trained["data_version"] == "f" * 64
    # an explicit data version wins; a URI the registry cannot read leaves it unknown, not an error
    assert (
        registry.register("given", "builtin:emoji-lit", "sha-3", data_version="abc")["data_version"] == "abc"
    )
    assert registry.register("elsewhere", "builtin:emoji-lit@/gone", "sha-4")["data_version"] is None


def test_a_version_registered_without_lineage_gets_it_when_registered_again(tmp_path):
    registry = Registry(str(tmp_path / "s.sqlite"), artifacts=tmp_path / "artifacts")
    registry.register("v", "builtin:emoji-lit", "sha", data_version="x")
    with registry.engine.begin() as conn:  # as an older vlmops wrote it
        conn.execute(versions.update().values(data_version=None))
    assert registry.register("v", "builtin:emoji-lit", "sha")["data_version"] == _card_train_version(
        WEIGHTS_DIR
    )


def test_an_onnx_bundle_carries_its_source_data_version(tmp_path):
    from vlmops.models import load_model, training_data_version
    from vlmops.models.onnx_export import export_bundle

    folder = tmp_path / "tiny"
    uri = save_tiny_model(folder)
    card = json.loads((folder / "emoji-lit.json").read_text())
    (folder / "emoji-lit.json").write_text(json.dumps({**card, "data": {"train_version": "d" * 64}}))
    export_bundle(load_model(uri), tmp_path / "bundle")
    assert training_data_version(f"onnx:{tmp_path / 'bundle'}") == "d" * 64
    registry = Registry(str(tmp_path / "s.sqlite"), artifacts=tmp_path / "artifacts")
    assert registry.register("b", f"onnx:{tmp_path / 'bundle'}", "sha")["data_version"] == "d" * 64


def test_dashboard_realised_accuracy_counts_feedback_given_after_the_pass(tmp_path):
    rng = np.random.default_rng(0)
    classes = unit(rng.normal(size=(K, DIM)))
    ref_emb, ref_targets = draw(rng, classes, 200)
    url = str(tmp_path / "s.sqlite")
    log = PredictionLog(url)
    log_window(log, rng, classes, 40, 0)
    run_monitor(log, "m-1", Reference(ref_emb, ref_targets, classes, 20.0), window=40)
    assert dashboard_context(url)["passes"][0]["realised"] is None  # nobody has judged an answer yet
    judged = 30
    for i in range(judged):  # verdicts arrive after the pass: 3 in 4 accepted, the rest corrected
        right = i % 4 != 0
        log.add_feedback(f"r{i}", right, None if right else "other", None)
    log.add_feedback("r31", True, None, None, source="model")  # a model's opinion is not a verdict
    passes = dashboard_context(url)["passes"]
    assert passes[0]["realised"] == pytest.approx(sum(i % 4 != 0 for i in range(judged)) / judged)
