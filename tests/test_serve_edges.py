"""What an outside probe broke: deep JSON, unexpected 500s on a kept-alive socket, a Host-header redirect."""

from __future__ import annotations

import json
import logging
import socket

import pytest
from fastapi.testclient import TestClient

from serve_helpers import make_app, serve_in_thread


@pytest.fixture
def served(tmp_path, fake_model):
    app, key, _ = make_app(tmp_path, fake_model())
    with TestClient(app) as client:  # raise_server_exceptions: a 500 that escapes fails the test
        client.headers["Authorization"] = f"Bearer {key}"
        yield app, client


def test_json_nested_a_thousand_deep_is_a_422_without_a_traceback(served, caplog):
    _, client = served
    body = '{"labels": ' + "[" * 1000 + "]" * 1000 + "}"  # 2 KB
    with caplog.at_level(logging.WARNING):
        r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "json_too_deep", r.text
    assert r.json()["request_id"] == r.headers["x-request-id"]
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
    assert client.get("/v1/models").status_code == 200  # and the server carries on


def test_no_redirect_takes_its_host_from_the_request(served):
    _, client = served
    for path in ("/v1/models/", "/dashboard/", "/healthz/"):
        r = client.get(path, headers={"host": "evil.example"}, follow_redirects=False)
        assert not r.is_redirect and "location" not in r.headers, (path, r.status_code, r.headers)
        assert r.status_code == 404 and path.rstrip("/") in r.json()["error"]["message"]


def test_an_unexpected_error_is_a_json_500_with_the_ids(served, caplog):
    app, client = served

    def broken():
        raise RuntimeError("a bug")

    app.state.gateway.describe = broken
    with caplog.at_level(logging.ERROR, logger="vlmops.serve"):
        r = client.get("/v1/models")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-request-id"] == r.json()["request_id"] and r.headers["x-model-version"] == "fake-1"
    assert "a bug" not in r.text  # the details go to the log, not to the client
    assert [rec for rec in caplog.records if rec.exc_info and r.json()["request_id"] in rec.getMessage()]


def _exchange(sock: socket.socket, path: str, key: str) -> tuple[int, dict, bytes]:
    """One GET on an open socket; (status, headers, body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection; got {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_after_a_500_the_same_connection_serves_the_next_request(tmp_path, fake_model):
    app, key, _ = make_app(tmp_path, fake_model())
    calls = {"n": 0}
    describe = app.state.gateway.describe

    def broken_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return describe()

    app.state.gateway.describe = broken_once
    with serve_in_thread(app) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        status, headers, body = _exchange(sock, "/v1/models", key)
        assert status == 500 and json.loads(body)["error"]["code"] == "internal_error"
        assert headers.get("connection") != "close" and "x-request-id" in headers
        status, headers, body = _exchange(sock, "/v1/models", key)  # same socket
        assert status == 200 and json.loads(body)["model"]["version"] == "fake-1", body
