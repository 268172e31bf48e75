"""ONNX bundles: fp32 parity with torch, int8 closeness, torch-free loading, atomic writes, gate, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from adapter_contract import TEXTS, check_adapter, sample_images
from onnx_helpers import save_tiny_model
from vlmops.cli import app
from vlmops.errors import DataError, ModelLoadError
from vlmops.export.gate import compare
from vlmops.models import load_model
from vlmops.models.onnx_export import GateFailed, export_bundle

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    uri = save_tiny_model(tmp_path_factory.mktemp("tiny"))
    return uri, load_model(uri)


@pytest.fixture(scope="module")
def fp32_dir(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "fp32"
    export_bundle(tiny[1], out)
    return out


@pytest.fixture(scope="module")
def int8_dir(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "int8"
    export_bundle(tiny[1], out, int8=True, calibration_images=sample_images(48, seed=1))
    return out


def test_fp32_bundle_matches_torch(tiny, fp32_dir):
    source, exported = tiny[1], load_model(f"onnx:{fp32_dir}")
    images = sample_images(7, seed=2)
    np.testing.assert_allclose(exported.embed_images(images), source.embed_images(images), atol=1e-4)
    np.testing.assert_allclose(exported.embed_texts(TEXTS), source.embed_texts(TEXTS), atol=1e-4)
    assert exported.info.version == f"{source.info.version}+onnx"
    assert exported.transform_id == source.transform_id and exported.logit_scale == source.logit_scale
    assert (exported.info.dim, exported.info.image_size) == (384, 16)
    check_adapter(exported)


def test_export_leaves_the_source_model_unchanged(tiny, fp32_dir):
    """torch.onnx.export restores a wrapper's train mode; the text encoder must stay in eval mode."""
    source = tiny[1]
    assert not source.text_tower.model.training and not source.tower.training
    meta = json.loads((fp32_dir / "bundle.json").read_text())
    assert meta["parity"]["text_max_abs_diff"] < 1e-4 and meta["parity"]["image_max_abs_diff"] < 1e-4


def test_int8_bundle_is_quantized_and_close_to_fp32(tiny, fp32_dir, int8_dir):
    fp32, int8 = load_model(f"onnx:{fp32_dir}"), load_model(f"onnx:{int8_dir}")
    graph = onnx.load(str(int8_dir / "image.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    images = sample_images(20, seed=3)
    a, b = fp32.embed_images(images), int8.embed_images(images)
    cosine = (a * b).sum(axis=1)
    assert cosine.min() > 0.95, cosine
    assert np.abs(a - b).max() > 1e-5  # it really is a different (quantized) computation
    check_adapter(int8)  # static quantization: vectors do not depend on the batch
    assert int8.info.version == f"{tiny[1].info.version}+onnx-int8-{int8.info.weights_sha256[:8]}"
    assert int8.info.version != fp32.info.version and int8.transform_id == fp32.transform_id
    meta = json.loads((int8_dir / "bundle.json").read_text())
    assert meta["quantization"]["image"]["calibration"]["n_images"] == 48
    assert meta["quantization"]["text"] is None  # text tower stays fp32 by default
    np.testing.assert_allclose(int8.embed_texts(TEXTS), fp32.embed_texts(TEXTS), atol=1e-5)


def test_bundle_runs_without_torch(int8_dir):
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from vlmops.models import load_model\n"
        f"m = load_model('onnx:{int8_dir}')\n"
        "assert m.embed_images([Image.new('RGBA', (30, 20), (255, 0, 0, 128))]).shape == (1, 384)\n"
        "assert m.embed_texts(['a dog']).shape == (1, 384)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_failed_gate_leaves_nothing_and_force_writes(tiny, tmp_path):
    failing = {"passed": False, "reference_top1": 0.5, "export_top1": 0.4, "drop": 0.1, "max_drop": 0.01}
    failing |= {"mean_cosine": 0.9, "min_cosine": 0.8}
    with pytest.raises(GateFailed, match=r"drop 10\.00 pp > allowed 1\.00 pp"):
        export_bundle(tiny[1], tmp_path / "b", check=lambda exported: failing)
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging folder
    meta = export_bundle(tiny[1], tmp_path / "b", check=lambda exported: failing, force=True)
    written = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert written["gate"]["passed"] is False and written["gate"]["forced"] is True
    assert meta["gate"] == written["gate"]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_export_rejects_bad_inputs(tiny, fake_model, tmp_path):
    with pytest.raises(ModelLoadError, match="only builtin:emoji-lit"):
        export_bundle(fake_model(dim=384), tmp_path / "x")
    with pytest.raises(DataError, match="calibration images"):
        export_bundle(tiny[1], tmp_path / "x", int8=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        export_bundle(tiny[1], tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_load_rejects_a_folder_that_is_not_a_bundle(tmp_path):
    with pytest.raises(ModelLoadError, match="not an ONNX bundle"):
        load_model(f"onnx:{tmp_path}")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(f"onnx:{tmp_path / 'missing'}")


def test_gate_compares_top1_and_cosine_from_vectors():
    classes, labels = ["a", "b", "c"], ["a", "b", "c", "a"]
    eye = np.eye(3, dtype=np.float32)
    reference = eye[[0, 1, 2, 0]]
    exported = reference.copy()
    exported[3] = [0.6, 0.8, 0.0]  # now closer to "b": one of four images flips
    result = compare(reference, exported, eye, eye, classes, labels, max_drop=0.2, split="val")
    assert (result.reference_top1, result.export_top1) == (1.0, 0.75)
    assert result.drop == pytest.approx(0.25) and not result.passed
    assert result.mean_cosine == pytest.approx((3 + 0.6) / 4) and result.min_cosine == pytest.approx(0.6)
    assert compare(reference, exported, eye, eye, classes, labels, max_drop=0.25).passed  # at the limit
    assert compare(reference, reference, eye, eye, classes, labels, max_drop=0.0).passed
    assert result.to_dict()["passed"] is False and result.to_dict()["n"] == 4


def _write_data(folder: Path, model, n_val: int = 60) -> Path:
    """A manifest of random images whose val labels are the source model's own predictions.

    The source is then 100 % right on val, so any prediction the int8 export flips is a measurable drop.
    """
    from vlmops.data.images import load_image
    from vlmops.evaluate.zeroshot import class_embeddings

    names = (
        "cat dog heart car tree star moon fish house key apple ball bird boat book cake clock cloud cup door"
    )
    names = names.split()
    paths = [folder / f"{i}.png" for i in range(20 + n_val)]
    for path, image in zip(paths, sample_images(len(paths), seed=4), strict=True):
        image.save(path)
    classes = class_embeddings(model, names, ("a photo of {}.",))
    predicted = (model.embed_images([load_image(p) for p in paths]) @ classes.T).argmax(axis=1)
    rows = []
    for i, path in enumerate(paths):
        split = "train" if i < 20 else "val"
        rows.append(
            {"id": str(i), "image": str(path), "label": f"thing/{names[predicted[i]]}", "split": split}
        )
    manifest = folder / "data.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_cli_gate_refuses_then_force_writes(tiny, tmp_path):
    data = _write_data(tmp_path, tiny[1])
    out = tmp_path / "bundle"
    args = ["export", "-m", tiny[0], "--int8", "--data", str(data), "--out", str(out), "--no-progress"]
    args += ["--max-drop", "0", "--calibration-size", "16", "--json", str(tmp_path / "r.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "gate failed" in result.output and "nothing written" in result.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["written"] is False and report["gate"]["reference_top1"] == 1.0
    assert report["gate"]["drop"] > 0 and report["gate"]["n"] == 60

    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    gate = json.loads((out / "bundle.json").read_text())["gate"]
    assert gate["passed"] is False and gate["forced"] is True and gate["split"] == "val"


def test_cli_fp32_export_passes_the_gate(tiny, tmp_path):
    data = _write_data(tmp_path, tiny[1], n_val=12)
    out = tmp_path / "bundle"
    args = ["export", "-m", tiny[0], "--data", str(data), "--out", str(out), "--no-progress"]
    result = runner.invoke(app, [*args, "--max-drop", "0"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["gate"]["passed"] and meta["gate"]["drop"] == 0.0 and meta["gate"]["min_cosine"] > 0.9999
    assert meta["runtime"] == "onnx" and meta["quantization"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "tflite"], "unknown --format 'tflite'"),
        (["--int8"], "--int8 needs --data"),
        (["--int8-text"], "add --int8"),
        (["--data", "/no/such/data"], "is not 'emoji'"),
    ],
)
def test_cli_bad_inputs_exit_2(tiny, tmp_path, extra, message):
    result = runner.invoke(app, ["export", "-m", tiny[0], "--out", str(tmp_path / "b"), *extra])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "b").exists()


def test_cli_refuses_a_non_empty_out_and_unexportable_models(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    result = runner.invoke(app, ["export", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "not empty" in result.output
    from hf_models import make_clip_dir

    clip = make_clip_dir(tmp_path / "clip")
    result = runner.invoke(app, ["export", "-m", f"hf:{clip}", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert "only builtin:emoji-lit" in " ".join(result.output.split())


def test_export_help_explains_the_gate():
    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    for phrase in ("--max-drop", "--force", "--calibration-split", "--gate-split", "Exit codes", "onnx:DIR"):
        assert phrase in text


def test_bundle_image_path_handles_empty_and_batches(int8_dir):
    model = load_model(f"onnx:{int8_dir}", batch_size=3)
    assert model.embed_images([]).shape == (0, 384) and model.embed_texts([]).shape == (0, 384)
    images = [Image.new("RGB", (16, 16), (i * 20, 0, 0)) for i in range(7)]
    np.testing.assert_allclose(model.embed_images(images)[5], model.embed_images(images[5:6])[0], atol=1e-6)
