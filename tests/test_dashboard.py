"""The monitoring dashboard: HTML content, the gateway route, and a real browser (Debian's Chromium)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from html_check import TagBalance
from serve_helpers import make_app, serve_in_thread
from test_monitor_run import DIM, K, Reference, draw, image_stat, log_window, unit
from vlmops.monitor.alerts import AlertConfig, AlertRule, AlertStore, evaluate_rules
from vlmops.monitor.dashboard import render_dashboard
from vlmops.monitor.run import run_monitor
from vlmops.registry.store import Registry
from vlmops.report.html import write_html
from vlmops.store.log import PredictionLog


def _reference(rng: np.random.Generator) -> tuple[np.ndarray, Reference]:
    """K unit class directions and a 300-row reference drawn around them, with image statistics."""
    classes = unit(rng.normal(size=(K, DIM)))
    ref_emb, ref_targets = draw(rng, classes, 300)
    stats = [image_stat(b) for b in rng.normal(150, 20, 300)]
    return classes, Reference(ref_emb, ref_targets, classes, 20.0, image_stats=stats)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    url = str(tmp / "s.sqlite")
    rng = np.random.default_rng(0)
    classes, reference = _reference(rng)
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


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is missing: run `make setup` (scripts/system-deps.sh installs it)"
    return chromium


def test_browser_sign_in_exchanges_an_admin_key_for_an_httponly_cookie(tmp_path, fake_model):
    app, admin, url = make_app(tmp_path, fake_model())
    from vlmops.serve.keys import KeyStore

    client_key = KeyStore(url).create("client")  # predict,feedback: no dashboard
    browser = {"accept": "text/html,application/xhtml+xml"}
    with TestClient(app) as client:
        page = client.get("/dashboard", headers=browser)
        assert page.status_code == 401 and 'action="/dashboard/login"' in page.text
        assert client.get("/dashboard").json()["error"]["code"] == "missing_key"  # API clients: JSON
        bad = client.post("/dashboard/login", data={"key": "vlm_000000000000_" + "x" * 43})
        assert bad.status_code == 401 and "unknown or revoked" in bad.text
        assert client.post("/dashboard/login", data={"key": client_key}).status_code == 403
        r = client.post("/dashboard/login", data={"key": admin}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/dashboard"
        cookie = r.headers["set-cookie"].lower()
        assert all(p in cookie for p in ("httponly", "samesite=strict", "path=/dashboard")), cookie
        assert admin.split("_", 2)[2].lower() not in cookie  # a token, not the key
        client.cookies.clear()
        client.cookies.set("vlmops_session", r.cookies["vlmops_session"])
        ok = client.get("/dashboard", headers=browser)
        assert ok.status_code == 200 and "Nothing yet" in ok.text
        assert client.get("/v1/models").status_code == 401  # the API never takes the session
        out = client.post("/dashboard/logout", follow_redirects=False)
        assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
        client.cookies.set("vlmops_session", r.cookies["vlmops_session"])
        assert client.get("/dashboard", headers=browser).status_code == 401  # ended for good


def _overlap(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def _inside(a: dict, box: dict) -> bool:
    cx, cy = a["x"] + a["width"] / 2, a["y"] + a["height"] / 2
    return box["x"] <= cx <= box["x"] + box["width"] and box["y"] <= cy <= box["y"] + box["height"]


def test_served_dashboard_in_chromium_after_sign_in_one_pass_tiny_p_values(tmp_path, fake_model):
    """One monitor pass with p-values down to 1e-50: every detector visible, none under the legend."""
    app, admin, url = make_app(tmp_path, fake_model())
    rng = np.random.default_rng(0)
    classes, reference = _reference(rng)
    log = PredictionLog(url)
    log_window(log, rng, classes, 200, 0, noise=1.4, offset=0.15, brightness=110.0)
    p_values = {
        name: value
        for name, value in run_monitor(log, "m-1", reference, window=200).metrics.items()
        if name.endswith(".p_value")
    }
    names = [k.split(".")[1] for k in p_values]
    assert len(names) == 5 and min(p_values.values()) < 1e-20
    assert sum(v < 1e-4 for v in p_values.values()) >= 2  # what the old 1e-4 floor pinned together
    from playwright.sync_api import sync_playwright

    with serve_in_thread(app) as port, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{port}/dashboard")
        page.screenshot(path=str(tmp_path / "login.png"))
        page.fill("input[name=key]", admin)
        page.click("button[type=submit]")
        page.wait_for_selector('figure.plot[data-kind="drift"] svg')
        assert page.url == f"http://127.0.0.1:{port}/dashboard"
        (cookie,) = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # no script on the page can read the session
        figure = page.locator('figure.plot[data-kind="drift"]')
        figure.screenshot(path=str(tmp_path / "drift.png"))
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        ticks = figure.locator('[id*="xtick_"] text').evaluate_all("els => els.map(e => e.textContent)")
        assert ticks == ["1"], ticks  # one pass is pass 1, not an axis from 0.945 to 1.05
        axes = figure.locator('[id$="drift-axes"]').bounding_box()
        legend = figure.locator('[id$="drift-legend"]').bounding_box()
        centres = {}
        for name in names:
            markers = figure.locator(f'[id$="drift-{name}"] use, [id$="drift-{name}-below"] use')
            assert markers.count() == 1, (name, markers.count())
            box = markers.first.bounding_box()
            assert box and box["width"] > 2 and _inside(box, axes), (name, box, axes)
            assert not _overlap(box, legend), (name, box, legend)
            centres[name] = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            if p_values[f"drift.{name}.p_value"] < 1e-12:  # on the floor, with its value written out
                text = figure.locator(f'[id$="drift-{name}-value"] text').text_content()
                assert re.search(r"p=\d(\.\d+)?e-\d+", text), text
        for a in names:  # no detector hides behind another
            for b in names:
                if a < b:
                    (ax_, ay), (bx, by) = centres[a], centres[b]
                    assert abs(ax_ - bx) > 5 or abs(ay - by) > 5, (a, b, centres)
        drawn = sorted((v, centres[k.split(".")[1]][1]) for k, v in p_values.items() if v >= 1e-12)
        assert [y for _, y in drawn] == sorted((y for _, y in drawn), reverse=True)  # lower p, lower down
        browser.close()
    assert not errors
