"""`export --int8` on data without splits names export's own options; `serve --model onnx:DIR` runs the
bundle under its own runtime without --runtime."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from eval_data import CLASSES, draw_shape
from onnx_helpers import save_tiny_model
from serve_helpers import start_server
from vlmops.cli import app
from vlmops.errors import ModelLoadError


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An image folder (class/xxx.png, so no splits) of four shape classes."""
    root = tmp_path_factory.mktemp("shapes")
    for c, (label, (colour, shape)) in enumerate(CLASSES.items()):
        (root / label.replace("/", "_")).mkdir()
        for i in range(6):
            draw_shape(colour, shape, 32, seed=100 * c + i).save(root / label.replace("/", "_") / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_uri(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def int8_bundle(tiny_uri, tmp_path_factory) -> Path:
    """An int8 bundle written through the library (the CLI route is tested below)."""
    from adapter_contract import sample_images
    from vlmops.models import load_model
    from vlmops.models.onnx_export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "int8"
    export_bundle(load_model(tiny_uri), out, int8=True, calibration_images=sample_images(16, seed=1))
    return out


def test_export_int8_on_data_without_splits_names_the_export_options(folder, tiny_uri, tmp_path):
    result = invoke("export", "--model", tiny_uri, "--int8", "--data", folder, "--out", tmp_path / "b")
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "has no splits" in message
    assert "pass --gate-split all and --calibration-split all" in message
    assert "--split " not in message.replace("-split all", "").replace("--gate-split", "")
    assert not (tmp_path / "b").exists()
    # only the calibration split still missing: only it is named
    result = invoke(
        "export", "--model", tiny_uri, "--int8", "--data", folder, "--out", tmp_path / "b",
        "--gate-split", "all",
    )  # fmt: skip
    assert result.exit_code == 2 and "pass --calibration-split all (" in " ".join(result.output.split())


def test_export_with_split_all_writes_a_gated_int8_bundle(folder, tiny_uri, tmp_path):
    out = tmp_path / "int8"
    result = invoke(
        "export", "--model", tiny_uri, "--int8", "--data", folder, "--out", out, "--no-progress",
        "--gate-split", "all", "--calibration-split", "all", "--calibration-size", 16, "--max-drop", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["runtime"] == "onnx-int8"
    assert meta["gate"]["n"] == 6 * 4 and meta["gate"]["split"] is None  # the gate measured every row


def test_runtime_is_read_from_the_bundle(int8_bundle, tmp_path, monkeypatch):
    from vlmops.config import get_settings
    from vlmops.export.runtimes import load_runtime, resolve_runtime

    uri = f"onnx:{int8_bundle}"
    assert resolve_runtime(uri) == "onnx-int8"
    assert load_runtime(uri).runtime == "onnx-int8"
    monkeypatch.setenv("VLMOPS_HOME", str(tmp_path))  # a home without a cached ONNX export of it
    get_settings(fresh=True)
    try:
        assert resolve_runtime("builtin:emoji-lit") == "onnx-image"  # no cached export: the in-memory one
    finally:
        monkeypatch.undo()
        get_settings(fresh=True)
    with pytest.raises(ModelLoadError, match="leave the runtime out"):
        load_runtime(uri, "onnx")


def test_serve_onnx_bundle_without_runtime_option(int8_bundle, tmp_path):
    proc, port = start_server(tmp_path, "--model", f"onnx:{int8_bundle}", "--insecure-no-auth")
    try:
        described = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    body = json.dumps(described)
    assert '"runtime": "onnx-int8"' in body and "+onnx-int8" in body
