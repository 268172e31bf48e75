"""`vlmops monitor run` on chat traffic: quiet on healthy exchanges, alerts and exit 1 on a shift."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from test_monitor_generative import INJECTIONS, NAMES, PROMPTS, REFUSALS
from vlmops.cli import app
from vlmops.data.emoji import manifest_path
from vlmops.store.log import ChatExchange, PredictionLog, PredictionRow

CAPTIONER = "builtin:emoji-captioner"
RULES = """
rules:
  - name: refusals up
    metric: generative.refusal_rate.p_value
    op: "<"
    threshold: 0.01
  - name: answers changed
    metric: generative.answer_embedding.p_value
    op: "<"
    threshold: 0.01
  - name: injection attempts
    metric: generative.injection.p_value
    op: "<"
    threshold: 0.01
"""


def exchange(i, version, answer, prompt="Describe this emoji.", finish="stop", key="k1", sha=None, t0=1e6):
    """One logged chat exchange (requests row + chat row)."""
    rng = np.random.default_rng(i)
    row = PredictionRow(
        f"c{i}",
        "chat",
        version,
        [sha or f"{i % 7:064x}"],
        float(rng.gamma(4, 10)),
        key_id=key,
        time=t0 + i,
    )
    chat = ChatExchange(
        f"c{i}",
        "local",
        "emoji-captioner",
        [{"role": "system", "text": "You describe emoji."}, {"role": "user", "text": prompt}],
        answer,
        finish_reason=finish,
        tokens_in=22,
        tokens_out=len(answer.split()) + 1,
        ttft_ms=float(rng.gamma(2, 3)),
        cost_usd=2e-6 * (23 + len(answer.split())),
    )
    return row, chat


def healthy(rng, start, n, version):
    return [
        exchange(
            start + i,
            version,
            NAMES[rng.integers(len(NAMES))],
            prompt=PROMPTS[rng.integers(len(PROMPTS))],
            finish="length" if rng.random() < 0.05 else "stop",
            key=("k1", "k2")[i % 2],
        )
        for i in range(n)
    ]


def shifted(rng, start, n, version):
    out = []
    for i in range(n):
        refuse, inject = rng.random() < 0.3, rng.random() < 0.25
        answer = REFUSALS[i % 3] if refuse else f"{NAMES[rng.integers(len(NAMES))]} on a white background"
        prompt = INJECTIONS[i % 3] if inject else PROMPTS[rng.integers(len(PROMPTS))]
        out.append(exchange(start + i, version, answer, prompt, "length" if rng.random() < 0.3 else "stop"))
    return out


def monitor(tmp_path, store, *extra):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    out = tmp_path / "out.json"
    args = ["monitor", "run", "--model", CAPTIONER, "--store", store, "--window", "60", "--rules", str(rules)]
    result = CliRunner().invoke(app, [*args, "--json", str(out), "--no-progress", *extra])
    return result, (json.loads(out.read_text()) if out.exists() else None)


def test_monitor_run_is_quiet_on_healthy_chat_and_alerts_on_a_shift(tmp_path):
    from vlmops.models import load_model

    version = load_model(CAPTIONER).info.version
    store = str(tmp_path / "s.sqlite")
    log = PredictionLog(store)
    # each detector alarms on 5 % of healthy window pairs by design (test_monitor_generative measures
    # it); this draw is one of the quiet ones, the shift below is flagged at p < 0.01 whatever the draw
    rng = np.random.default_rng(2)
    log.write_chat(healthy(rng, 0, 120, version))
    result, report = monitor(tmp_path, store)
    assert result.exit_code == 0, result.output
    gen = report["results"]["generative"]
    detectors = gen["detectors"]
    tested = [k for k, v in detectors.items() if "skipped" not in v]
    assert set(tested) >= {"answer_embedding", "answer_length", "finish_reason", "refusal_rate", "injection"}
    assert all(detectors[k]["p_value"] > 0.01 for k in tested), {k: detectors[k]["p_value"] for k in tested}
    assert "keep-images" in detectors["grounding"]["skipped"]
    assert report["alerts"] == [] and gen["window"]["n"] == 60 and gen["reference"]["n"] == 60
    assert set(gen["usage_by_key"]) == {"k1", "k2"} and gen["usage"]["ttft_ms_p50"] > 0

    log.write_chat(shifted(rng, 1000, 60, version))
    result, report = monitor(tmp_path, store)
    assert result.exit_code == 1, result.output
    assert {a["rule"] for a in report["alerts"]} == {"refusals up", "answers changed", "injection attempts"}
    metrics = report["metrics"]
    for name in ("answer_embedding", "answer_length", "finish_reason", "refusal_rate", "injection"):
        assert metrics[f"generative.{name}.drifted"] == 1.0, name
    assert metrics["generative.answer_length.window"] > metrics["generative.answer_length.reference"] + 1
    examples = report["results"]["generative"]["examples"]
    assert examples["injection"] and all(e["matched"] for e in examples["injection"])
    assert "ALERT" in result.output
    history = CliRunner().invoke(app, ["monitor", "history", "--store", store])
    assert history.exit_code == 0 and "refusal_rate" in history.output, history.output
    check_dashboard(store, tmp_path)


def check_dashboard(store: str, tmp_path) -> None:
    """The generative panel: both passes in the charts, usage per key, examples; drawn in Chromium."""
    from html_check import TagBalance, chromium_page
    from vlmops.monitor.dashboard import render_dashboard
    from vlmops.report.html import write_html

    html = render_dashboard(store)
    parser = TagBalance()
    parser.feed(html)
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    assert 'id="generative"' in html and "Generative traffic" in html
    path = write_html(html, tmp_path / "dashboard.html")
    with chromium_page(path) as page:
        for kind, gids in (
            ("generative-drift", ["generative-refusal_rate", "generative-answer_embedding"]),
            ("generative-signals", ["signal-refusals", "signal-injections"]),
        ):
            figure = page.locator(f'figure.plot[data-kind="{kind}"] svg')
            box = figure.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 150, (kind, box)
            for gid in gids:
                line = page.locator(f'[id$="{gid}"] path').first
                assert line.is_visible() and (line.get_attribute("d") or "").count("L") >= 1, gid
        tables = page.locator("#generative table")
        rows = tables.nth(2).locator("tbody tr")  # after the two per-window tables
        assert rows.count() == 1  # the latest window: key k1 only (the shifted traffic)
        for i in range(2):
            assert tables.nth(i).locator("tbody tr").count() == 2, i  # one row per monitoring pass
        # every table fits the page width (none scrolls sideways) and shows acronyms as such
        overflow = "ds => ds.map(d => d.scrollWidth - d.clientWidth)"
        widths = page.eval_on_selector_all("#generative div.scroll", overflow)
        assert widths and max(widths) <= 0, widths
        assert page.get_by_role("columnheader", name="TTFT ms p50").count() == 2
        panel = page.locator("#generative")
        for kind in ("injection", "refusal"):  # example rows, with the patterns they matched
            assert panel.get_by_role("cell", name=kind, exact=True).count() >= 1, kind
        page.locator("#generative").screenshot(path=str(tmp_path / "generative.png"))


def test_chat_version_option_and_clear_errors(tmp_path):
    store = str(tmp_path / "s.sqlite")
    result, _ = monitor(tmp_path, store)
    assert result.exit_code == 2 and "serve more traffic" in result.output
    log = PredictionLog(store)
    rng = np.random.default_rng(1)
    log.write_chat(healthy(rng, 0, 120, "upstream:gpt-test"))
    result, report = monitor(tmp_path, store, "--chat-version", "upstream:gpt-test")
    assert result.exit_code == 0, result.output
    assert report["results"]["generative"]["model_version"] == "upstream:gpt-test"
    result, _ = monitor(tmp_path, store, "--chat-version", "upstream:gpt-test", "--judge", CAPTIONER)
    assert result.exit_code == 2 and "cannot embed" in result.output


@pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")
def test_grounding_falls_when_the_images_change(tmp_path):
    """Real captioner answers on google/twitter emoji, then on OpenMoji; the images are kept."""
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.data.images import load_image
    from vlmops.models import load_model
    from vlmops.serve.archive import ImageArchive

    captioner = load_model(CAPTIONER)
    archive = ImageArchive(tmp_path / "kept")
    manifest = load_emoji_manifest()
    healthy_rows = manifest[manifest["vendor"].isin(["google", "twitter"])].sample(120, random_state=0)
    shifted_rows = manifest[manifest["vendor"] == "openmoji"].sample(60, random_state=0)
    pairs = []
    for start, rows in ((0, healthy_rows), (1000, shifted_rows)):
        images = [load_image(p) for p in rows["image"]]
        answers = captioner.generate(images, ["Describe this emoji."] * len(images), max_tokens=24)
        for i, (path, answer) in enumerate(zip(rows["image"], answers, strict=True)):
            sha = archive.put(open(path, "rb").read())  # noqa: SIM115
            pairs.append(exchange(start + i, captioner.info.version, answer.text, sha=sha))
    PredictionLog(str(tmp_path / "s.sqlite")).write_chat(pairs)
    vocabulary = tmp_path / "objects.txt"  # these images' tags: the default (every emoji tag) is slower
    vocabulary.write_text(
        "\n".join(
            sorted(
                {t for tags in manifest.loc[[*healthy_rows.index, *shifted_rows.index], "tags"] for t in tags}
            )
        )
    )
    _, report = monitor(
        tmp_path,
        str(tmp_path / "s.sqlite"),
        "--images",
        str(tmp_path / "kept"),
        "--window",
        "60",
        "--vocabulary",
        str(vocabulary),
        "--no-ocr",  # OCR of 180 images is tested in test_monitor_image_injection, on small windows
    )
    detectors = report["results"]["generative"]["detectors"]
    grounding = detectors["grounding"]
    assert grounding["drifted"], grounding
    assert grounding["evidence"]["window_mean"] < grounding["evidence"]["reference_mean"] - 0.05
    assert "p_value" in detectors["hallucination"]  # ran: kept images and a vocabulary
    assert report["metrics"]["generative.hallucination.window"] >= 0.0
    assert "--no-ocr" in detectors["image_injection"]["skipped"]
