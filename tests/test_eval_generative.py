"""`vlmops eval --task caption|vqa`: items from emoji data and manifests, metrics that tell a right model
from a wrong one, the cache, the CLI against the OpenAI-compatible fake, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from openai_fake import FakeServer
from serve_helpers import serve_in_thread
from vlmops.cli import app
from vlmops.data.emoji import load_emoji_manifest, manifest_path
from vlmops.data.manifest import load_manifest
from vlmops.data.questions import VQA_KINDS
from vlmops.evaluate.generative import GenerativeOptions, build_generative_task
from vlmops.evaluate.generative_suite import run_generative_eval
from vlmops.models.base import Generation, ModelInfo, Usage
from vlmops.store.cache import EmbeddingCache

pytestmark = pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")


class LookupCaptioner:
    """Answers from a table keyed by the image's pixels: the right answer, or a fixed one."""

    def __init__(self, table: dict[bytes, str], fixed: str | None = None):
        self.table, self.fixed = table, fixed
        self.info = ModelInfo(name="lookup", version=f"lookup-{fixed}", dim=0, uri="test:lookup")
        self.calls = 0

    def generate(self, images, prompts, *, max_tokens=32, temperature=0.0, seed=None, logprobs=False):
        self.calls += len(images)
        # an image it has not seen (corrupted, written on) gets an answer that is never right
        texts = [self.fixed or self.table.get(im.convert("RGB").tobytes(), "a banana") for im in images]
        confidence = -0.1 if self.fixed is None else -2.0
        return [
            Generation(t, "stop", Usage(12, len(t.split())), 0.002, token_logprobs=(confidence,))
            for t in texts
        ]


@pytest.fixture(scope="module")
def records():
    manifest = load_emoji_manifest()
    chosen = manifest[(manifest["split"] == "test") & manifest["vendor"].isin(["google", "facebook"])]
    return chosen.groupby("vendor").sample(20, random_state=0).reset_index(drop=True)


@pytest.fixture()
def manifest_file(tmp_path, records):
    path = tmp_path / "captions.jsonl"
    with path.open("w") as out:
        for row in records.itertuples():
            out.write(json.dumps({
                "id": row.id, "image": row.image, "texts": [row.name], "label": row.label,
                "tags": list(row.tags), "question": "What skin tone is shown?", "answers": [row.skin_tone],
                "attrs": {"vendor": row.vendor, "skin_tone": row.skin_tone, "gender": row.gender},
            }) + "\n")  # fmt: skip
    return path


def test_items_from_emoji_data():
    manifest = load_emoji_manifest()
    caption = build_generative_task(manifest, "emoji", "caption")
    assert caption.split == "test" and caption.prompts[0] == "Describe this emoji."
    assert caption.references[0] == [caption.frame["name"].iloc[0]] and caption.cluster_by == "concept"
    vqa = build_generative_task(manifest, "emoji", "vqa", split="val")
    assert vqa.n == len(VQA_KINDS) * int((manifest["split"] == "val").sum())
    assert set(vqa.question_types) == set(VQA_KINDS)


def test_a_right_model_scores_well_and_a_fixed_caption_badly(records, manifest_file, tmp_path):
    task = build_generative_task(load_manifest(manifest_file), "other", "caption", split="all")
    table = {
        Image.open(p).convert("RGB").tobytes(): n
        for p, n in zip(records["image"], records["name"], strict=True)
    }
    options = GenerativeOptions(min_n=5)
    cache = EmbeddingCache(tmp_path / "store.sqlite")
    right = run_generative_eval(LookupCaptioner(table), task, cache, options)
    wrong = run_generative_eval(LookupCaptioner(table, fixed="grinning cat face"), task, cache, options)
    assert right["reference"]["exact_match"] == 1.0 and right["reference"]["bleu1"] > 0.99
    assert wrong["reference"]["exact_match"] < 0.1
    assert wrong["reference"]["cider_d"] < 0.2 * right["reference"]["cider_d"]
    assert right["hallucination"]["chair_i"] < wrong["hallucination"]["chair_i"]
    assert right["headline"]["cider_d"] == right["reference"]["cider_d"]
    assert right["confidence"]["ece"] == pytest.approx(1 - np.exp(-0.1), abs=1e-6)  # always right, 0.905 sure
    fields = {f["field"] for f in right["slices"]["fields"]}
    assert {"vendor", "skin_tone"} <= fields
    again = LookupCaptioner(table)
    cached = run_generative_eval(again, task, cache, options)
    assert again.calls == 0 and cached["generation"]["hits"] == task.n
    assert cached["cost"]["tokens_per_s"] is None and "cache" in cached["cost"]["note"]


@pytest.fixture()
def fake(monkeypatch):
    server = FakeServer(key="k-test")
    monkeypatch.setenv("VLMOPS_OPENAI_API_KEY", "k-test")
    with serve_in_thread(server.app()) as port:
        server.uri = f"openai:fake-vlm@http://127.0.0.1:{port}/v1"
        yield server


def invoke(*args):
    return CliRunner().invoke(app, ["eval", *args, "--no-progress"])


def test_cli_caption_and_vqa_against_the_openai_fake(fake, manifest_file, tmp_path):
    store = str(tmp_path / "store.sqlite")
    common = ["--model", fake.uri, "--data", str(manifest_file), "--split", "all", "--store", store]
    result = invoke("--task", "caption", *common, "--min-n", "5", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["task"] == "caption" and report["data"]["n"] == 40
    assert report["examples"][0]["answer"].startswith("a ") and report["reference"]["exact_match"] == 0.0
    assert report["cost"]["latency_ms_p50"] > 0 and report["generation"]["misses"] == 40
    vqa = invoke("--task", "vqa", *common, "--min-n", "5", "--json", "-")
    assert vqa.exit_code == 0, vqa.output
    by_type = json.loads(vqa.stdout[vqa.stdout.index("{") :])["reference"]["by_type"]
    assert by_type["question"]["n"] == 40
    fired = invoke("--task", "caption", *common, "--min-n", "5", "--fail-on", "exact_match<0.5")
    assert fired.exit_code == 1 and "exact_match" in fired.output


def test_cli_errors_name_the_fix(fake, tmp_path, manifest_file):
    no_questions = tmp_path / "plain.jsonl"
    no_questions.write_text(
        json.dumps({"id": "a", "image": str(load_emoji_manifest()["image"].iloc[0])}) + "\n"
    )
    result = invoke("--task", "vqa", "--model", fake.uri, "--data", str(no_questions), "--split", "all")
    assert result.exit_code == 2 and "'question' column" in result.output
    result = invoke("--task", "caption", "--model", "builtin:emoji-lit", "--data", str(manifest_file))
    assert result.exit_code == 2 and "cannot generate text" in result.output
    result = invoke("--task", "summarise", "--data", str(manifest_file))
    assert result.exit_code == 2 and "unknown task 'summarise'" in result.output


def test_clip_score_and_ref_clip_score_by_their_formulas(records, manifest_file):
    from conftest import FakeModel

    task = build_generative_task(load_manifest(manifest_file), "other", "caption", split="all")
    table = {
        Image.open(p).convert("RGB").tobytes(): n
        for p, n in zip(records["image"], records["name"], strict=True)
    }
    judge = FakeModel(dim=16)
    report = run_generative_eval(LookupCaptioner(table), task, None, GenerativeOptions(min_n=5), judge=judge)
    images = judge.embed_images([Image.open(p) for p in task.frame["image"]])
    answers = judge.embed_texts(list(records["name"]))
    clip = 2.5 * np.maximum((images * answers).sum(1), 0)
    assert report["grounding"]["clip_score"] == pytest.approx(clip.mean(), abs=1e-5)
    # the answer equals its only reference: cos = 1, so RefCLIPScore = 2c / (c + 1)
    assert report["grounding"]["ref_clip_score"] == pytest.approx(np.mean(2 * clip / (clip + 1)), abs=1e-5)
    assert report["headline"]["clip_score"] == report["grounding"]["clip_score"]
    judged = report["hallucination"]["judge_estimate"]
    assert judged["reference_chair_i"] == report["hallucination"]["chair_i"]
    assert 0 <= judged["estimate_chair_i"] <= 1 and judged["mentions"] == report["hallucination"]["mentions"]


def test_cider_and_clip_score_are_sliced_by_vendor_with_their_own_ranges(records, manifest_file):
    from conftest import FakeModel
    from vlmops.evaluate.slices import slice_metrics
    from vlmops.evaluate.text_metrics import caption_tokens, cider_d

    task = build_generative_task(load_manifest(manifest_file), "other", "caption", split="all")
    table = {  # right for google, a fixed caption for facebook
        Image.open(p).convert("RGB").tobytes(): n if v == "google" else "grinning face"
        for p, n, v in zip(records["image"], records["name"], records["vendor"], strict=True)
    }
    judge = FakeModel(dim=16)
    report = run_generative_eval(LookupCaptioner(table), task, None, GenerativeOptions(min_n=5), judge=judge)
    sliced = report["slices_by_metric"]
    assert {"cider_d", "rouge_l", "clip_score", "ref_clip_score"} <= set(sliced)
    refs = [[caption_tokens(r) for r in rs] for rs in task.references]
    pairs = zip(records["name"], records["vendor"], strict=True)
    answers = [n if v == "google" else "grinning face" for n, v in pairs]
    cider = cider_d([caption_tokens(a) for a in answers], refs)
    assert cider.max() > 1.0  # not a rate: the [0, 1] check of a rate would have refused it
    vendors = {s["value"]: s["mean"] for f in sliced["cider_d"]["fields"] if f["field"] == "vendor"
               for s in f["slices"]}  # fmt: skip
    for vendor, mean in vendors.items():
        assert mean == pytest.approx(cider[(task.frame["vendor"] == vendor).to_numpy()].mean(), abs=1e-9)
    assert vendors["google"] > vendors["facebook"] + 1.0
    clip = np.array(report["grounding"]["per_item"]["clip_score"])
    (vendor_field,) = [f for f in sliced["clip_score"]["fields"] if f["field"] == "vendor"]
    for s in vendor_field["slices"]:
        chosen = (task.frame["vendor"] == s["value"]).to_numpy()
        assert s["mean"] == pytest.approx(clip[chosen].mean(), abs=1e-4) and s["ci_low"] <= s["mean"]
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        slice_metrics(cider, task.frame, ["vendor"])  # a raw score without its range is refused


def test_html_report_in_chromium(fake, manifest_file, tmp_path):
    import shutil

    from html_check import TagBalance

    html = tmp_path / "caption.html"
    result = invoke(
        "--task", "caption", "--model", fake.uri, "--data", str(manifest_file), "--split", "all",
        "--store", str(tmp_path / "s.sqlite"), "--min-n", "5", "--html", str(html),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = html.read_text()
    checker = TagBalance()
    checker.feed(text)
    assert not checker.errors and not checker.stack
    for section in ("reference", "hallucination", "confidence", "slices", "cost", "examples"):
        assert f'id="{section}"' in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is missing: run `make setup`"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri())
        box = page.locator('figure.plot[data-kind="reliability"] svg').bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 150
        assert page.locator("#examples tbody tr").count() == 20
        assert page.locator('#slices figure.plot[data-kind="slice-ci"]').count() >= 2
        page.screenshot(path=str(tmp_path / "caption.png"), full_page=True)
        browser.close()
    assert not errors
    shutil.copy(tmp_path / "caption.png", "/tmp/gen/caption-report.png") if Path(
        "/tmp/gen"
    ).is_dir() else None


def test_cli_caption_on_a_tiny_hf_llava_folder(manifest_file, tmp_path):
    from hf_generative_models import make_llava_dir

    folder = make_llava_dir(tmp_path)
    html, out = tmp_path / "llava.html", tmp_path / "llava.json"
    result = invoke(
        "--task", "caption", "--model", f"hf:{folder}", "--data", str(manifest_file), "--split", "all",
        "--store", str(tmp_path / "s.sqlite"), "--suite", "quick", "--max-tokens", "6", "--min-n", "5",
        "--html", str(html), "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["model"]["uri"] == f"hf:{folder}" and report["generation"]["misses"] == 40
    assert report["confidence"]["ece"] is not None  # transformers gives token log-probabilities
    assert 'id="reference"' in html.read_text()


def test_a_vocabulary_file_replaces_the_data_tags_and_more_metrics_are_sliced(
    records, manifest_file, tmp_path
):
    from vlmops.errors import DataError
    from vlmops.evaluate.hallucination import read_vocabulary

    words = tmp_path / "objects.txt"
    words.write_text("# what CHAIR looks for\ncat: kitten, kitty\n\nbanana\n")
    vocabulary = read_vocabulary(words)
    assert vocabulary == {"cat": ["kitten", "kitty"], "banana": []}
    task = build_generative_task(
        load_manifest(manifest_file), "other", "caption", "all", vocabulary=vocabulary
    )
    report = run_generative_eval(
        LookupCaptioner({}, fixed="a banana and a kitten"),
        task,
        None,
        GenerativeOptions(min_n=5, suite="quick"),
    )
    chair_part = report["hallucination"]
    assert chair_part["mentions"] == 2 * task.n  # only the file's objects are read
    has_cat = ["cat" in task.objects[i] for i in range(task.n)]
    expected = [("banana",) if cat else ("cat", "banana") for cat in has_cat]
    assert [tuple(sorted(w)) for w in chair_part["per_caption"]] == [tuple(sorted(e)) for e in expected]
    assert set(report["slices_by_metric"]) == {"cider_d", "rouge_l", "hallucination_free"}
    assert report["slices_by_metric"]["hallucination_free"]["fields"][0]["slices"][0]["mean"] == 0.0
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="names no object"):
        read_vocabulary(tmp_path / "empty.txt")


def test_cli_vqa_on_a_tiny_hf_llava_folder(manifest_file, tmp_path):
    from hf_generative_models import make_llava_dir

    folder = make_llava_dir(tmp_path)
    out = tmp_path / "vqa.json"
    result = invoke(
        "--task", "vqa", "--model", f"hf:{folder}", "--data", str(manifest_file), "--split", "all",
        "--store", str(tmp_path / "s.sqlite"), "--suite", "quick", "--max-tokens", "4", "--min-n", "5",
        "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["task"] == "vqa" and report["reference"]["by_type"]["question"]["n"] == 40
