"""`vlmops registry` and `vlmops gate` from the command line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vlmops.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def write_report(path, correct, ece=0.05):
    report = {
        "schema": "vlmops.eval/1",
        "headline": {
            "top1": sum(correct) / len(correct),
            "ece": ece,
            "worst_slice_top1": 0.3,
            "corruption_top1": 0.2,
        },
        "items": {"ids": [str(i) for i in range(len(correct))], "correct": correct},
    }
    path.write_text(json.dumps(report))
    return path


def test_register_promote_rollback_and_gate(tmp_path):
    store = str(tmp_path / "s.sqlite")
    base = write_report(tmp_path / "base.json", [1] * 60 + [0] * 40)
    worse = write_report(tmp_path / "worse.json", [1] * 40 + [0] * 60)
    result = invoke(
        "registry",
        "register",
        "--model",
        "builtin:emoji-lit",
        "--eval",
        str(base),
        "--alias",
        "champion",
        "--store",
        store,
        "--json",
        str(tmp_path / "reg.json"),
    )
    assert result.exit_code == 0, result.output
    version = json.loads((tmp_path / "reg.json").read_text())["version"]
    assert version.startswith("emoji-lit-")
    assert (
        invoke("gate", "--candidate", str(worse), "--baseline", "champion", "--store", store).exit_code == 1
    )
    out = tmp_path / "gate.json"
    ok = invoke(
        "gate", "--candidate", str(base), "--baseline", "champion", "--store", store, "--json", str(out)
    )
    assert ok.exit_code == 0 and json.loads(out.read_text())["passed"] is True
    assert invoke("gate", "--candidate", str(base), "--rules", "top1>0", "--store", store).exit_code == 2
    invoke("registry", "history", "--store", store, "--json", str(tmp_path / "h.json"))
    assert [e["kind"] for e in json.loads((tmp_path / "h.json").read_text())] == ["register", "alias"]
    assert invoke("registry", "rollback", "--store", store).exit_code == 2  # nothing earlier
    assert invoke("registry", "promote", "nope", "--store", store).exit_code == 2
