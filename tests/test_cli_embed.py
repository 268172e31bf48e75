"""`vlmops embed` through a throwaway typer app with the fake model injected."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import vlmops.cli.embed as cli_embed


@pytest.fixture
def app(monkeypatch, fake_model):
    """A typer app with only `embed`; load_model returns one shared FakeModel."""
    model = fake_model()
    monkeypatch.setattr(cli_embed, "load_model", lambda uri: model)
    application = typer.Typer()
    application.callback()(lambda: None)
    application.command("embed")(cli_embed.embed)
    application.model = model
    return application


@pytest.fixture
def folder(tmp_path, png_writer):
    for i, name in enumerate(["cat/a.png", "cat/b.png", "red_fox/c.png"]):
        png_writer(tmp_path / "data" / name, seed=i)
    return tmp_path / "data"


def run(app, *args):
    return CliRunner().invoke(app, ["embed", "--model", "fake:x", "--no-progress", *map(str, args)])


def test_embed_folder_then_cached(app, folder, tmp_path):
    out, store, report = tmp_path / "out" / "emb.parquet", tmp_path / "s.sqlite", tmp_path / "r.json"
    result = run(app, "--data", folder, "--out", out, "--store", store, "--json", report)
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(out)
    assert list(df.columns) == ["id", "model_version", "image_embedding", "text_embedding"]
    assert list(df["id"]) == ["cat/a.png", "cat/b.png", "red_fox/c.png"]
    assert set(df["model_version"]) == {"fake-1"}
    assert all(len(v) == 8 for v in df["image_embedding"]) and all(len(v) == 8 for v in df["text_embedding"])
    summary = json.loads(report.read_text())
    assert summary["n"] == 3 and summary["images"]["misses"] == 3 and summary["texts"]["unique"] == 2
    assert app.model.text_batches == [2]

    result = run(app, "--data", folder, "--out", out, "--store", f"sqlite:///{store}", "--json", report)
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    assert summary["images"]["hits"] == 3 and summary["images"]["misses"] == 0
    assert app.model.images_embedded == 3
    assert (
        pd.read_parquet(out)["image_embedding"].apply(list).tolist()
        == df["image_embedding"].apply(list).tolist()
    )


def test_records_without_texts_get_null(app, tmp_path, png_writer):
    png_writer(tmp_path / "a.png", 1)
    png_writer(tmp_path / "b.png", 2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "image": "a.png", "texts": ["x"]}\n{"id": "b", "image": "b.png"}\n')
    out = tmp_path / "o.parquet"
    result = run(app, "--data", manifest, "--out", out, "--store", tmp_path / "s.sqlite")
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(out)
    assert len(df["text_embedding"][0]) == 8 and df["text_embedding"][1] is None


def test_bad_data_is_one_line_exit_2(app, tmp_path):
    result = run(app, "--data", tmp_path / "nope", "--out", tmp_path / "o.parquet", "--store", tmp_path / "s")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]
    assert not (tmp_path / "o.parquet").exists()


def test_help(app):
    result = CliRunner().invoke(app, ["embed", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--data", "--out", "--store", "--batch-size", "--json", "--no-progress"):
        assert option in result.output
