"""The monitoring dashboard: HTML content, the gateway route, and a real browser (Debian's Chromium)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from html_check import TagBalance
from serve_helpers import make_app
from test_monitor_run import DIM, K, Reference, draw, image_stat, log_window, unit
from vlmops.monitor.alerts import AlertConfig, AlertRule, AlertStore, evaluate_rules
from vlmops.monitor.dashboard import render_dashboard
from vlmops.monitor.run import run_monitor
from vlmops.registry.store import Registry
from vlmops.report.html import write_html
from vlmops.store.log import PredictionLog


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    url = str(tmp / "s.sqlite")
    rng = np.random.default_rng(0)
    classes = unit(rng.normal(size=(K, DIM)))
    ref_emb, ref_targets = draw(rng, classes, 300)
    stats = [image_stat(b) for b in rng.normal(150, 20, 300)]
    reference = Reference(ref_emb, ref_targets, classes, 20.0, image_stats=stats)
    log = PredictionLog(url)
    rule = AlertConfig((AlertRule("drift", "drift.mmd.p_value", "<", 0.01),))
    for i, kw in enumerate([{}, {}, {"noise": 1.4, "offset": 0.15, "brightness": 110.0}]):
        log_window(log, rng, classes, 60, 1000 * i, **kw)
        report = run_monitor(log, "m-1", reference, window=60)
        evaluate_rules(rule, report.metrics, report.n, AlertStore(url), "m-1")
    registry = Registry(url, artifacts=tmp / "artifacts")
    registry.register("m-1", "builtin:a", "aaa")
    registry.register("m-2", "builtin:b", "bbb", parent="m-1")
    registry.promote("m-1")
    registry.promote("m-2", reason="gate passed")
    registry.rollback(reason="canary alert")
    return url, tmp


def test_dashboard_html_has_charts_tables_and_history(store):
    url, _ = store
    html = render_dashboard(url)
    parser = TagBalance()
    parser.feed(html)
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    assert html.count("<svg") == 2 and "drift-mmd" in html and "estimate-atc" in html
    assert "drift-image_stats" in html and "drift-query_text" not in html  # no search traffic logged
    assert "canary alert" in html and "rollback" in html and ">drift<" in html
    assert "http://" not in html.split("xmlns")[0]  # nothing fetched from outside


def test_gateway_serves_the_dashboard_behind_auth(tmp_path, fake_model):
    app, key, _ = make_app(tmp_path, fake_model())
    with TestClient(app) as client:
        assert client.get("/dashboard").status_code == 401
        r = client.get("/dashboard", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "Nothing yet" in r.text


def test_charts_render_with_data_in_chromium(store):
    url, tmp = store
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is missing: run `make setup` (scripts/system-deps.sh installs it)"
    from playwright.sync_api import sync_playwright

    page_path = write_html(render_dashboard(url), tmp / "dashboard.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        for kind, series in (
            ("drift", ["mmd", "ks_pca", "prediction_shift", "alignment", "image_stats"]),
            ("accuracy", ["atc"]),
        ):
            figure = page.locator(f'figure.plot[data-kind="{kind}"] svg')
            box = figure.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 150, (kind, box)
            for name in series:
                gid = f"drift-{name}" if kind == "drift" else f"estimate-{name}"
                line = page.locator(f'[id$="{gid}"] path').first
                assert line.is_visible()
                d = line.get_attribute("d") or ""
                assert d.count("L") >= 2, (gid, d[:80])  # one segment per pass after the first: 3 passes
        assert page.locator("#alerts tbody tr").count() == 1
        page.screenshot(path=str(tmp / "dashboard.png"), full_page=True)
        browser.close()
    assert not errors
