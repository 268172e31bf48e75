"""Registry versions, aliases, history and rollback; the promotion gate's decisions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from vlmops.registry.gate import GateError, gate, mcnemar_worse, parse_gate_rules
from vlmops.registry.store import Registry, RegistryError


@pytest.fixture
def registry(tmp_path):
    return Registry(str(tmp_path / "s.sqlite"), artifacts=tmp_path / "artifacts")


def test_register_alias_promote_rollback_history(registry, tmp_path):
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "model.bin").write_bytes(b"x")
    registry.register("v1", "builtin:a", "aaa", data_version="d1", copy_from=weights)
    registry.register("v2", "builtin:b", "bbb", parent="v1")
    assert (tmp_path / "artifacts" / "v1" / "model.bin").read_bytes() == b"x"
    registry.promote("v1", reason="first")
    registry.set_alias("challenger", "v2")
    registry.promote("challenger", reason="gate passed")
    assert registry.alias("champion") == "v2" and registry.get("champion")["parent"] == "v1"
    event = registry.rollback(reason="canary alert")
    assert (event["from_version"], event["to_version"], event["kind"]) == ("v2", "v1", "rollback")
    kinds = [e["kind"] for e in registry.history("champion")]
    assert kinds == ["promote", "promote", "rollback"]
    times = [e["time"] for e in registry.history("champion")]
    assert registry.served_at(times[1] + 1e-6) == "v2" and registry.served_at(times[0] - 1) is None
    assert {v["version"]: v["aliases"] for v in registry.list()} == {"v1": ["champion"], "v2": ["challenger"]}


def test_registry_refuses_bad_references(registry):
    registry.register("v1", "u", "aaa")
    with pytest.raises(RegistryError, match="other weights"):
        registry.register("v1", "u", "bbb")
    with pytest.raises(RegistryError, match="no model version"):
        registry.promote("nope")
    with pytest.raises(RegistryError, match="unknown alias"):
        registry.set_alias("king", "v1")
    with pytest.raises(RegistryError, match="not set"):
        registry.rollback()
    registry.promote("v1")
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback()


def report(top1, ece, worst, corr, correct):
    return {
        "headline": {"top1": top1, "ece": ece, "worst_slice_top1": worst, "corruption_top1": corr},
        "items": {"ids": [str(i) for i in range(len(correct))], "correct": list(correct)},
    }


def test_gate_passes_an_equal_or_better_candidate_and_blocks_a_worse_one():
    rng = np.random.default_rng(0)
    base_correct = (rng.random(500) < 0.6).astype(int)
    better = base_correct.copy()
    better[np.flatnonzero(base_correct == 0)[:40]] = 1
    worse = base_correct.copy()
    worse[np.flatnonzero(base_correct == 1)[:40]] = 0
    base = report(base_correct.mean(), 0.05, 0.4, 0.5, base_correct)
    assert gate(report(better.mean(), 0.05, 0.42, 0.5, better), base).passed
    decision = gate(report(worse.mean(), 0.05, 0.4, 0.5, worse), base)
    assert not decision.passed
    failed = {c.rule for c in decision.checks if not c.passed}
    assert failed == {"top1_drop<=0.01", "paired_mcnemar_p_worse>=0.05"}
    higher_ece = gate(report(base_correct.mean(), 0.09, 0.4, 0.5, base_correct), base)
    assert [c.rule for c in higher_ece.checks if not c.passed] == ["ece_increase<=0.02"]


def test_mcnemar_matches_the_binomial_closed_form():
    cand = [1] * 10 + [0] * 25 + [1] * 50
    base = [0] * 10 + [1] * 25 + [1] * 50
    result = mcnemar_worse(cand, base)
    assert (result["only_baseline_right"], result["only_candidate_right"]) == (25, 10)
    assert result["p_worse"] == pytest.approx(stats.binom.sf(24, 35, 0.5))


def test_gate_refuses_incomparable_reports_and_bad_rules():
    a = report(0.5, 0.1, 0.4, 0.5, [1, 0, 1])
    b = report(0.5, 0.1, 0.4, 0.5, [1, 0])
    with pytest.raises(GateError, match="different items"):
        gate(a, b)
    with pytest.raises(GateError, match="no per-item"):
        gate({"headline": {}}, a)
    with pytest.raises(GateError, match="bad gate rule"):
        parse_gate_rules("top1_drop>0.1")
    missing = gate({**a, "headline": {"top1": 0.5}}, a, rules="ece_increase<=0.02")
    assert not missing.passed and "missing" in missing.checks[0].note
