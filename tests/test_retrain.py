"""Retraining from feedback: the feedback-loop guard, and a fine-tune that learns the corrected labels."""

from __future__ import annotations

import json

import pandas as pd
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from eval_data import write_manifest
from serve_helpers import b64
from vlmops.cli import app
from vlmops.data.manifest import resolve_data
from vlmops.data.version import dataset_version
from vlmops.evaluate.task import build_task
from vlmops.models import load_model
from vlmops.registry.retrain import verified_examples
from vlmops.registry.store import Registry
from vlmops.serve.app import create_app
from vlmops.serve.archive import ImageArchive
from vlmops.serve.resources import LabelSet
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.log import PredictionLog


def accuracy(model, rows, names, root):
    from vlmops.data.images import load_image

    images = [load_image(root / r["image"]) for r in rows]
    emb = model.embed_images(images)
    texts = model.embed_texts([f"a photo of {n}." for n in names])
    predicted = (emb @ texts.T).argmax(1)
    return sum(names[p] == r["label"].split("/")[-1] for p, r in zip(predicted, rows, strict=True)) / len(
        rows
    )


NONSENSE = {
    "round/red circle": "made-up/zorp",
    "round/blue circle": "made-up/blick",
    "square/red square": "made-up/frum",
    "square/green square": "made-up/tave",
}


def test_retrain_uses_only_human_labels_and_learns_them(tmp_path):
    manifest = write_manifest(tmp_path / "shapes", per_class=10)
    # words no model knows, so zero-shot is near chance and only the feedback can teach them
    rows = [
        {**row, "label": NONSENSE[row["label"]]} for row in map(json.loads, manifest.read_text().splitlines())
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    names = tuple(build_task(resolve_data(str(manifest)), "other", "all", None).class_names)
    store, archive = str(tmp_path / "s.sqlite"), tmp_path / "archive"
    base = load_model("builtin:emoji-lit")
    gateway = Gateway(
        base,
        ServeConfig(store=store, keep_images=str(archive), template="a photo of {}."),
        PredictionLog(store),
        {"shapes": LabelSet("shapes", names, "a photo of {}.")},
    )
    with TestClient(create_app(gateway)) as client:
        for i, row in enumerate(rows):
            image = (manifest.parent / row["image"]).read_bytes()
            answer = client.post("/v1/classify", json={"image": b64(image), "label_set": "shapes"}).json()
            truth = row["label"].split("/")[-1]
            client.post(
                "/v1/feedback",
                json={
                    "request_id": answer["request_id"],
                    "accepted": answer["label"] == truth,
                    "label": None if answer["label"] == truth else truth,
                },
            )
            if i % 4 == 0:  # a model's opinion, wrong on purpose: must never become a training label
                client.post(
                    "/v1/feedback",
                    json={
                        "request_id": answer["request_id"],
                        "accepted": False,
                        "label": names[0],
                        "source": "model",
                    },
                )
    examples, counts = verified_examples(PredictionLog(store), ImageArchive(archive), names)
    assert counts == {"model_label_refused": 10, "used": 40}
    truth = {r["id"]: r["label"].split("/")[-1] for r in rows}
    assert sorted(e.label for e in examples) == sorted(truth.values())
    before = accuracy(base, rows, names, manifest.parent)
    out = tmp_path / "retrained"
    result = CliRunner().invoke(
        app,
        [
            "retrain",
            "--archive",
            str(archive),
            "--out",
            str(out),
            "--data",
            str(manifest),
            "--replay",
            "0",
            "--epochs",
            "6",
            "--store",
            store,
            "--json",
            str(tmp_path / "r.json"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    retrained = load_model(f"builtin:emoji-lit@{out}")
    after = accuracy(retrained, rows, names, manifest.parent)
    assert before <= 0.6 and after >= 0.9, (before, after)
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["feedback"]["model_label_refused"] == 10 and summary["parent"] == base.info.version
    registry = Registry(store)
    assert registry.alias("challenger") == retrained.info.version
    assert registry.get("challenger")["parent"] == base.info.version
    assert summary["gate"]["passed"] and registry.get("challenger")["eval_report"]["headline"]["top1"] >= 0.9
    # lineage: each version records the data it learned from; the retrain's is its feedback (no replay)
    card = json.loads((out / "emoji-lit.json").read_text())
    learned = pd.DataFrame(
        {
            "id": [e.request_id for e in examples],
            "sha256": [e.sha256 for e in examples],
            "label": [e.label for e in examples],
        }
    )
    assert summary["data_version"] == card["data"]["train_version"] == dataset_version(learned)
    assert registry.get("challenger")["data_version"] == summary["data_version"]
    assert registry.get(base.info.version)["data_version"] == base.card["data"]["train_version"]
    assert card["data"]["parent_train_version"] == base.card["data"]["train_version"]
    assert registry.get("challenger")["eval_report"]["data"]["dataset_version"]  # the report names its data
    impossible = CliRunner().invoke(
        app,
        [
            "retrain",
            "--archive",
            str(archive),
            "--out",
            str(tmp_path / "again"),
            "--data",
            str(manifest),
            "--replay",
            "0",
            "--epochs",
            "1",
            "--store",
            store,
            "--rules",
            "top1_drop<=-2",
        ],
        catch_exceptions=False,
    )
    assert impossible.exit_code == 1 and "FAILED" in impossible.output  # a failed gate fails the command


def test_retrain_without_feedback_is_a_clear_error(tmp_path):
    manifest = write_manifest(tmp_path / "shapes", per_class=3)
    result = CliRunner().invoke(
        app,
        [
            "retrain",
            "--archive",
            str(tmp_path / "a"),
            "--out",
            str(tmp_path / "o"),
            "--data",
            str(manifest),
            "--store",
            str(tmp_path / "s.sqlite"),
        ],
    )
    assert result.exit_code == 2 and "no human-verified feedback" in result.output
