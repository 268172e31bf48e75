"""Manifest loaders: JSONL, CSV, Parquet, image folders; bad rows reported with row numbers."""

from __future__ import annotations

import json
import sys
import types

import pandas as pd
import pytest

from vlmops.data.manifest import (
    CORE_COLUMNS,
    ManifestError,
    attribute_columns,
    load_image_folder,
    load_manifest,
    resolve_data,
)
from vlmops.errors import DataError


@pytest.fixture
def images(tmp_path, png_writer):
    """Three PNGs under tmp_path/img."""
    return [png_writer(tmp_path / "img" / f"{i}.png", seed=i) for i in range(3)]


def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_jsonl_normalised(tmp_path, images):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {
                "id": "a",
                "image": "img/0.png",
                "texts": ["grinning face", "happy"],
                "label": "smileys/face-smiling/grinning",
                "split": "train",
                "attrs": {"vendor": "apple", "skin_tone": None},
                "provenance": {"source": "unit", "licence": "CC0", "version": "1", "sha256": "x"},
            },
            {"id": 2, "image": str(images[1]), "texts": "one caption", "attrs": {"vendor": "google"}},
        ],
    )
    df = load_manifest(path)
    assert list(df.columns[:5]) == list(CORE_COLUMNS)
    assert list(df["id"]) == ["a", "2"]
    assert df["image"][0] == str(images[0].resolve())
    assert df["texts"][0] == ["grinning face", "happy"] and df["texts"][1] == ["one caption"]
    assert df["label"][0] == "smileys/face-smiling/grinning" and df["label"][1] is None
    assert df["split"][0] == "train" and df["split"][1] is None
    assert list(df["vendor"]) == ["apple", "google"]
    assert df["licence"][0] == "CC0" and list(df.columns[-4:]) == ["source", "licence", "version", "sha256"]
    assert attribute_columns(df) == ["vendor", "skin_tone"]


def test_jsonl_bad_rows_reported_with_line_numbers(tmp_path, images):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"id": "ok", "image": "img/0.png"},
            "{not json",
            {"image": "img/1.png"},
            {"id": "ok", "image": "img/2.png"},
            {"id": "gone", "image": "img/missing.png"},
            {"id": "t", "image": "img/1.png", "texts": 5},
            "",
            "[1, 2]",
            {"id": "fine", "image": "img/2.png"},
        ],
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    err = info.value
    assert [row for row, _ in err.problems] == [2, 3, 4, 5, 6, 8]
    reasons = dict(err.problems)
    assert "invalid JSON" in reasons[2]
    assert "missing id" in reasons[3]
    assert "duplicate id 'ok'" in reasons[4] and "line 1" in reasons[4]
    assert "not found" in reasons[5] and "missing.png" in reasons[5]
    assert "texts" in reasons[6]
    assert "6 bad line(s)" in str(err) and "line 8:" in str(err)
    assert isinstance(err, DataError)


def test_message_lists_at_most_20_problems(tmp_path, images):
    path = write_jsonl(tmp_path / "m.jsonl", [{"id": str(i)} for i in range(25)])
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert len(info.value.problems) == 25
    assert "line 20:" in str(info.value) and "line 21:" not in str(info.value)
    assert "and 5 more" in str(info.value)


def test_csv_texts_and_extra_columns(tmp_path, images):
    path = tmp_path / "m.csv"
    path.write_text(
        "id,image,texts,label,vendor\n"
        "a,img/0.png,cat|kitten,animal/cat,apple\n"
        'b,img/1.png,"[""a dog"", ""b|c""]",,\n'
        "c,img/2.png,,animal,google\n"
    )
    df = load_manifest(path)
    assert list(df["texts"]) == [["cat", "kitten"], ["a dog", "b|c"], []]
    assert list(df["label"]) == ["animal/cat", None, "animal"]
    assert attribute_columns(df) == ["vendor"]
    assert df["image"][2] == str(images[2].resolve())


def test_csv_bad_rows_and_missing_column(tmp_path, images):
    path = tmp_path / "m.csv"
    path.write_text("id,image,texts\na,img/0.png,\n,img/1.png,\na,img/2.png,\nd,img/2.png,[broken\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert [row for row, _ in info.value.problems] == [2, 3, 4]
    no_image = tmp_path / "n.csv"
    no_image.write_text("id,path\na,img/0.png\n")
    with pytest.raises(DataError, match="no 'image' column"):
        load_manifest(no_image)


def test_parquet_with_structs_and_bad_rows(tmp_path, images):
    rows = pd.DataFrame(
        {
            "id": ["a", "b"],
            "image": ["img/0.png", "img/1.png"],
            "texts": [["x"], []],
            "attrs": [{"vendor": "apple"}, {"vendor": "google"}],
            "score": [0.5, 1.5],
        }
    )
    rows.to_parquet(tmp_path / "m.parquet")
    df = load_manifest(tmp_path / "m.parquet")
    assert list(df["texts"]) == [["x"], []]
    assert attribute_columns(df) == ["score", "vendor"]
    rows.assign(id=["a", "a"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "bad.parquet")
    assert info.value.problems[0][0] == 2


def test_image_folder(tmp_path, png_writer):
    root = tmp_path / "folder"
    png_writer(root / "cat" / "a.png", 1)
    png_writer(root / "dog_house" / "b.png", 2)
    png_writer(root / "animals" / "big-cat" / "c.png", 3)
    png_writer(root / "loose.png", 4)
    png_writer(root / ".hidden" / "x.png", 5)
    (root / "cat" / "notes.txt").write_text("not an image")
    df = load_image_folder(root)
    rows = {r.id: r for r in df.itertuples()}
    assert set(rows) == {"cat/a.png", "dog_house/b.png", "animals/big-cat/c.png", "loose.png"}
    assert rows["cat/a.png"].label == "cat" and rows["cat/a.png"].texts == ["cat"]
    assert rows["dog_house/b.png"].texts == ["dog house"]
    assert rows["animals/big-cat/c.png"].label == "animals/big-cat"
    assert rows["animals/big-cat/c.png"].texts == ["big cat"]
    assert rows["loose.png"].label is None and rows["loose.png"].texts == []
    assert attribute_columns(df) == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "empty")


def test_unknown_suffix_and_resolve_data(tmp_path, images, monkeypatch):
    (tmp_path / "m.txt").write_text("id,image\n")
    with pytest.raises(DataError, match=r"\.jsonl, \.csv, \.parquet"):
        load_manifest(tmp_path / "m.txt")
    write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "image": "img/0.png"}])
    assert list(resolve_data(str(tmp_path / "m.jsonl"))["id"]) == ["a"]
    assert len(resolve_data(str(tmp_path / "img"))) == 3
    with pytest.raises(DataError, match=r"nowhere.*'emoji'"):
        resolve_data("nowhere")
    fake = types.SimpleNamespace(load_emoji_manifest=lambda: pd.DataFrame({"id": ["e"]}))
    monkeypatch.setitem(sys.modules, "vlmops.data.emoji", fake)
    assert list(resolve_data("emoji")["id"]) == ["e"]
