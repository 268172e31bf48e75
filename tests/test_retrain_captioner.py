"""`vlmops retrain` for builtin:emoji-captioner: corrected chat answers (human only) + replay of the
training questions -> a challenger that learned them, registered with its lineage and gated."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vlmops.cli import app
from vlmops.data.emoji import load_emoji_manifest, manifest_path
from vlmops.data.images import load_image
from vlmops.data.questions import VQA_KINDS
from vlmops.evaluate.text_metrics import exact_match
from vlmops.models import load_model
from vlmops.registry.retrain_generative import FirstOf, ManifestImages, corrected_answers
from vlmops.registry.store import Registry
from vlmops.serve.archive import ImageArchive
from vlmops.store.log import ChatExchange, PredictionLog, PredictionRow

pytestmark = pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")
PROMPT = "Describe this emoji."


def log_chat(log: PredictionLog, request_id: str, sha256: str, answer: str, endpoint: str = "chat") -> None:
    row = PredictionRow(request_id, endpoint, "emoji-captioner-x", [sha256], 5.0)
    chat = ChatExchange(
        request_id, "local", "builtin:emoji-captioner", [{"role": "user", "text": PROMPT}], answer
    )
    log.write_chat([(row, chat)])


@pytest.fixture(scope="module")
def wrong_answers():
    """Google test emoji that the shipped captioner names wrongly, with its answers."""
    torch.set_num_threads(1)
    model = load_model("builtin:emoji-captioner")
    manifest = load_emoji_manifest()
    test = manifest[(manifest["split"] == "test") & (manifest["vendor"] == "google")].sample(
        40, random_state=0
    )
    answers = model.generate([load_image(p) for p in test["image"]], [PROMPT] * len(test))
    wrong = [
        (row, g.text) for (_, row), g in zip(test.iterrows(), answers, strict=True) if g.text != row["name"]
    ]
    assert len(wrong) >= 6
    return manifest, model, wrong[:6]


def test_retrain_learns_human_corrections_only_and_records_lineage(tmp_path, wrong_answers):
    manifest, base, wrong = wrong_answers
    store = str(tmp_path / "store.sqlite")
    log = PredictionLog(store)
    for i, (row, answer) in enumerate(wrong):
        log_chat(log, f"chat-{i}", row["sha256"], answer)
        log.add_feedback(f"chat-{i}", False, row["name"], None, rating=1.0)
        log.add_feedback(f"chat-{i}", False, "red apple", None, source="model")  # refused by the guard
    log_chat(log, "rated", wrong[0][0]["sha256"], wrong[0][1])
    log.add_feedback("rated", True, None, None, rating=5.0)  # a rating alone teaches nothing
    log_chat(log, "lost", "f" * 64, "grinning face")
    log.add_feedback("lost", False, "party popper", None)  # its image cannot be found
    examples, counts = corrected_answers(log, ManifestImages(manifest))
    assert counts == {"model_label_refused": 6, "used": 6, "no_corrected_answer": 1, "image_not_available": 1}
    kept = ImageArchive(tmp_path / "archive")  # what `vlmops serve --keep-images` keeps, found by sha256
    kept.put(b"not an emoji", "f" * 64)
    both, counts = corrected_answers(log, FirstOf([kept, ManifestImages(manifest)]))
    assert counts["used"] == 7 and kept.path("f" * 64) in {FirstOf([kept]).path(e.sha256) for e in both[-1:]}
    assert {(e.prompt, e.answer) for e in examples} == {(PROMPT, row["name"]) for row, _ in wrong}
    out = tmp_path / "retrained"
    args = ["retrain", "--model", "builtin:emoji-captioner", "--images", "emoji", "--out", str(out)]
    args += ["--replay", "64", "--epochs", "6", "--lr", "1e-3", "--store", store, "--gate-sample", "8"]
    result = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "r.json")], catch_exceptions=False)
    summary = json.loads((tmp_path / "r.json").read_text())
    assert result.exit_code == (0 if summary["gate"]["passed"] else 1), result.output
    retrained = load_model(f"builtin:emoji-captioner@{out}")
    images = [load_image(row["image"]) for row, _ in wrong]
    names = [[row["name"]] for row, _ in wrong]
    after = exact_match([g.text for g in retrained.generate(images, [PROMPT] * len(images))], names)
    assert after.mean() >= 5 / 6, after  # the shipped model had every one of them wrong
    assert summary["feedback"]["model_label_refused"] == 6 and summary["replay"] == 64
    # lineage: the new version's parent, and the data it learned from in its card and the registry
    registry = Registry(store)
    assert registry.alias("challenger") == retrained.info.version == summary["version"]
    assert registry.get("challenger")["parent"] == base.info.version
    card = retrained.card
    assert (
        card["data"]["train_version"] == summary["data_version"] == registry.get("challenger")["data_version"]
    )
    assert card["data"]["parent_train_version"] == base.card["data"]["train_version"]
    assert (
        card["tower_sha256"] == base.card["tower_sha256"] and card["retrain"]["parent"] == base.info.version
    )
    # the gate compared both on captions (CIDEr-D per item) and questions (exact match) of 8 test images
    gate = summary["gate"]
    assert (gate["caption"]["paired"]["metric"], gate["caption"]["paired"]["n"]) == ("cider_d", 8)
    vqa = gate["vqa"]["paired"]
    assert (vqa["metric"], vqa["n"], vqa["items"]) == ("exact_match", 8, 8 * len(VQA_KINDS))  # per image
    assert gate["passed"], gate  # a handful of corrections does not make it significantly worse
    again = CliRunner().invoke(app, ["gate", "--candidate", "challenger", "--baseline", base.info.version,
                                     "--store", store])  # fmt: skip
    assert again.exit_code == 0 and "paired_wilcoxon" in again.output


def test_captioner_retrain_errors_name_the_fix(tmp_path):
    store = str(tmp_path / "store.sqlite")
    base = ["retrain", "--model", "builtin:emoji-captioner", "--out", str(tmp_path / "o"), "--store", store]
    no_images = CliRunner().invoke(app, base)
    assert no_images.exit_code == 2 and "--images" in no_images.output
    nothing = CliRunner().invoke(app, [*base, "--images", "emoji"])
    assert nothing.exit_code == 2 and "no human-corrected chat answers" in nothing.output
    no_archive = CliRunner().invoke(app, ["retrain", "--out", str(tmp_path / "o"), "--store", store])
    assert no_archive.exit_code == 2 and "--archive" in no_archive.output


def test_only_keys_allowed_to_label_teach_the_captioner(tmp_path):
    from vlmops.serve.keys import KeyStore

    store = str(tmp_path / "store.sqlite")
    log, keys = PredictionLog(store), KeyStore(store)
    labeller, client = keys.create("labeller"), keys.create("client", scopes="predict")
    manifest = load_emoji_manifest().head(3)
    for i, (token, sha) in enumerate(zip([labeller, client, labeller], manifest["sha256"], strict=True)):
        key_id = keys.verify(token).key_id
        row = PredictionRow(f"c{i}", "chat", "cap", [sha], 1.0, key_id=key_id)
        exchange = ChatExchange(f"c{i}", "local", "cap", [{"role": "user", "text": PROMPT}], "x")
        log.write_chat([(row, exchange)])
        log.add_feedback(f"c{i}", False, "grinning face", key_id)
    examples, counts = corrected_answers(log, ManifestImages(manifest), keys.labellers())
    assert counts == {"key_may_not_label": 1, "used": 2} and {e.request_id for e in examples} == {"c0", "c2"}
    assert corrected_answers(log, ManifestImages(manifest))[1] == {"used": 3}  # --feedback-from any
