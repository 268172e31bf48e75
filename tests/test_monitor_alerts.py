"""Alert rules (YAML, thresholds, min samples, cooldown, webhook) and feedback metrics (the loop guard)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from vlmops.monitor.alerts import AlertRuleError, AlertStore, evaluate_rules, load_rules
from vlmops.monitor.feedback import feedback_metrics

RULES = """
rules:
  - name: drift
    metric: drift.mmd.p_value
    op: "<"
    threshold: 0.01
    min_samples: 50
    cooldown_s: 600
  - name: low accuracy
    metric: estimate.atc
    op: "<="
    threshold: 0.4
"""


def test_rules_fire_respect_min_samples_and_cooldown(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    config = load_rules(path)
    store = AlertStore(str(tmp_path / "s.sqlite"))
    metrics = {"drift.mmd.p_value": 0.001, "estimate.atc": 0.5}
    assert evaluate_rules(config, metrics, n_samples=20, store=store, now=1000.0) == []  # too few samples
    fired = evaluate_rules(config, metrics, n_samples=80, store=store, now=1000.0)
    assert [a["rule"] for a in fired] == ["drift"] and fired[0]["evidence"]["n_samples"] == 80
    assert evaluate_rules(config, metrics, 80, store, now=1300.0) == []  # cooldown
    assert [a["rule"] for a in evaluate_rules(config, metrics, 80, store, now=1700.0)] == ["drift"]
    both = evaluate_rules(config, {"drift.mmd.p_value": 0.5, "estimate.atc": 0.4}, 80, store, now=1800.0)
    assert [a["rule"] for a in both] == ["low accuracy"]
    assert len(store.list()) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: []", "non-empty"),
        ("rules:\n  - {name: a, metric: m, op: '~', threshold: 1}", "op"),
        ("rules:\n  - {name: a, metric: m, op: '<'}", "missing"),
        ("rules:\n  - {name: a, metric: m, op: '<', threshold: x}", "could not convert"),
        ("webhook: ftp://x\nrules:\n  - {name: a, metric: m, op: '<', threshold: 1}", "webhook"),
        ("rules: [", "YAML"),
    ],
)
def test_bad_rule_files_are_named(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(AlertRuleError, match=message):
        load_rules(path)


def test_webhook_receives_the_alert(tmp_path):
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    path = tmp_path / "rules.yaml"
    path.write_text(f"webhook: http://127.0.0.1:{server.server_port}/hook\n" + RULES)
    evaluate_rules(load_rules(path), {"estimate.atc": 0.1}, 100, AlertStore(str(tmp_path / "s.sqlite")))
    thread.join(10)
    server.server_close()
    assert received and received[0]["rule"] == "low accuracy" and received[0]["value"] == 0.1


def _request(rid, label, abstain=False):
    return SimpleNamespace(
        request_id=rid, endpoint="classify", prediction=json.dumps({"label": label, "abstain": abstain})
    )


def _feedback(rid, accepted, label=None, source="human"):
    return SimpleNamespace(request_id=rid, accepted=accepted, label=label, source=source)


def test_feedback_metrics_use_only_human_labels():
    requests = [
        _request("a", "cat"),
        _request("b", "dog"),
        _request("c", "cat", abstain=True),
        _request("d", "cow"),
    ]
    feedback = [
        _feedback("a", True),
        _feedback("b", False, "cat"),
        _feedback("c", False, "cat"),  # corrected to the predicted label: the prediction was right
        _feedback("d", True, source="model"),  # an auto-accept: not ground truth
    ]
    m = feedback_metrics(requests, feedback)
    assert (m.requests, m.human_feedback, m.model_feedback) == (4, 3, 1)
    assert m.abstention_rate == 0.25
    assert m.acceptance_rate == pytest.approx(1 / 3) and m.correction_rate == pytest.approx(2 / 3)
    assert m.realised_accuracy == pytest.approx(2 / 3)
