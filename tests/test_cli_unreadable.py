"""Unreadable images are found up front: `embed` and `eval` list them all with row numbers (exit 2), or
leave them out with --skip-unreadable and record which."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from eval_data import write_manifest
from vlmops.cli import app
from vlmops.data.screen import find_unreadable, probe_image


def _break(path: Path, how: str) -> None:
    """Damage an image file the ways they arrive damaged: not an image, cut short, empty."""
    data = path.read_bytes()
    if how == "text":
        path.write_text("<html>404 not found</html>")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> tuple[Path, dict[int, str]]:
    """A JSONL manifest of 4 classes x 6 images; rows 2, 9 and 20 (1-based) have broken images."""
    manifest = write_manifest(tmp_path_factory.mktemp("broken"), per_class=6, size=32)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    damage = {2: "text", 9: "truncated", 20: "empty"}
    for row, how in damage.items():
        _break(manifest.parent / lines[row - 1]["image"], how)
    return manifest, damage


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_probe_names_each_kind_of_damage(broken):
    manifest, damage = broken
    frame = pd.read_json(manifest, lines=True)
    found = find_unreadable(frame.assign(image=[str(manifest.parent / p) for p in frame["image"]]))
    assert [u.row for u in found] == sorted(damage)
    assert "not an image" in found[0].reason and "not an image" in found[2].reason
    assert found[1].reason.startswith("corrupt image file")  # truncated PNG: chunk checksums fail
    assert probe_image(str(manifest.parent / "missing.png")) == "file not found"


def test_probe_finds_a_truncated_jpeg_and_passes_whole_ones(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path, quality=90)
    assert probe_image(str(path)) is None
    path.write_bytes(path.read_bytes()[:4000])  # the header is intact, the scan data is cut short
    assert probe_image(str(path)).startswith("corrupt image file")


@pytest.mark.parametrize("command", ["embed", "eval"])
def test_cli_lists_every_unreadable_row_at_once_and_exits_2(broken, tmp_path, command):
    manifest, damage = broken
    extra = ["--out", tmp_path / "e.parquet"] if command == "embed" else ["--suite", "quick"]
    result = invoke(
        command, "--model", "builtin:emoji-lit", "--data", manifest, "--store", tmp_path / "s.sqlite",
        "--no-progress", *extra,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "BufferedReader" not in result.output
    message = " ".join(result.output.split())
    assert f"3 of {6 * 4} images cannot be read" in message
    for row in damage:
        assert f"row {row} (" in message
    assert "--skip-unreadable" in message
    assert not (tmp_path / "s.sqlite").exists() or _cached_vectors(tmp_path / "s.sqlite") == 0  # before work


def _cached_vectors(store: Path) -> int:
    import sqlite3

    with sqlite3.connect(store) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        return sum(db.execute(f"select count(*) from {t}").fetchone()[0] for t in tables if "embed" in t)


def test_embed_skip_unreadable_writes_the_rest_and_records_the_skipped(broken, tmp_path):
    manifest, damage = broken
    out, report = tmp_path / "e.parquet", tmp_path / "e.json"
    result = invoke(
        "embed", "--model", "builtin:emoji-lit", "--data", manifest, "--store", tmp_path / "s.sqlite",
        "--no-progress", "--out", out, "--json", report, "--skip-unreadable",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipped 3 unreadable image(s), rows 2, 9, 20" in " ".join(result.output.split())
    summary = json.loads(report.read_text())
    assert summary["n"] == 6 * 4 - 3
    assert summary["skipped_unreadable"]["n"] == 3
    assert [r["row"] for r in summary["skipped_unreadable"]["rows"]] == sorted(damage)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    skipped_ids = {lines[row - 1]["id"] for row in damage}
    assert {r["id"] for r in summary["skipped_unreadable"]["rows"]} == skipped_ids
    written = set(pd.read_parquet(out)["id"])
    assert len(written) == 21 and not written & skipped_ids


def test_eval_skip_unreadable_records_the_skipped_in_the_report(broken, tmp_path):
    manifest, damage = broken
    report = tmp_path / "r.json"
    result = invoke(
        "eval", "--model", "builtin:emoji-lit", "--data", manifest, "--store", tmp_path / "s.sqlite",
        "--no-progress", "--suite", "quick", "--json", report, "--skip-unreadable", "--cluster-by", "concept",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())["data"]
    assert data["n"] == 6 * 4 - 3
    assert data["skipped_unreadable"]["n"] == 3
    assert [r["row"] for r in data["skipped_unreadable"]["rows"]] == sorted(damage)


def test_a_folder_of_only_broken_images_is_an_error_even_when_skipping(tmp_path):
    folder = tmp_path / "data" / "cat"
    folder.mkdir(parents=True)
    (folder / "a.png").write_text("not a png")
    result = invoke(
        "embed", "--model", "builtin:emoji-lit", "--data", folder.parent, "--out", tmp_path / "e.parquet",
        "--store", tmp_path / "s.sqlite", "--skip-unreadable", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 2 and "none of its 1 images can be read" in " ".join(result.output.split())
    shutil.rmtree(folder)
