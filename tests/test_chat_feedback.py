"""/v1/feedback on chat completions: a rating and/or a corrected answer, bound to the requesting key.

The chat rows are written with `PredictionLog.write_chat`, as the /v1/chat/completions route does.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serve_helpers import b64, make_app, png_bytes
from vlmops.serve.keys import KeyStore
from vlmops.store.log import ChatExchange, PredictionLog, PredictionRow


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def log_chat(url: str, request_id: str, key_id: str | None, answer: str = "grinning face") -> None:
    row = PredictionRow(request_id, "chat", "emoji-captioner-x", ["ab" * 32], 10.0, key_id=key_id)
    chat = ChatExchange(
        request_id,
        "local",
        "builtin:emoji-captioner",
        [{"role": "user", "text": "Describe this emoji."}],
        answer,
    )
    PredictionLog(url).write_chat([(row, chat)])


@pytest.fixture
def served(tmp_path, fake_model):
    app, _, url = make_app(tmp_path, fake_model())
    with TestClient(app) as client:
        yield client, url, KeyStore(url)


def test_chat_feedback_takes_a_rating_and_or_a_corrected_answer(served):
    client, url, keys = served
    a = keys.create("a")
    log_chat(url, "chat-1", keys.verify(a).key_id)
    post = lambda body: client.post("/v1/feedback", json={"request_id": "chat-1", **body}, headers=bearer(a))  # noqa: E731
    assert post({"rating": 4}).status_code == 200
    assert post({"answer": " smiling face with open mouth ", "rating": 1.5}).status_code == 200
    assert post({"accepted": False}).status_code == 200  # thumbs down without a correction
    rows = PredictionLog(url).feedback()
    assert [(f.accepted, f.label, f.rating, f.source) for f in rows] == [
        (True, None, 4.0, "human"),
        (False, "smiling face with open mouth", 1.5, "human"),
        (False, None, None, "human"),
    ]
    bad = {
        "empty_feedback": {},
        "empty_answer": {"answer": "  "},
        "conflicting_feedback": {"accepted": True, "answer": "x"},
        "wrong_field": {"accepted": False, "label": "grinning face"},
    }
    for code, body in bad.items():
        r = post(body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (code, r.text)
    for rating in (-1, 6, "high"):
        assert post({"rating": rating}).status_code == 422
    assert len(PredictionLog(url).feedback()) == 3  # nothing refused was written


def test_chat_feedback_is_bound_to_the_key_that_asked(served):
    client, url, keys = served
    a, b = keys.create("a"), keys.create("b")
    log_chat(url, "chat-a", keys.verify(a).key_id)
    poison = {"request_id": "chat-a", "answer": "poisoned answer"}
    r = client.post("/v1/feedback", json=poison, headers=bearer(b))
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_request"
    predict_only = keys.create("p", scopes="predict")
    assert client.post("/v1/feedback", json=poison, headers=bearer(predict_only)).status_code == 403
    assert PredictionLog(url).feedback() == []
    model_said = {"request_id": "chat-a", "answer": "a model's guess", "source": "model"}
    assert client.post("/v1/feedback", json=model_said, headers=bearer(a)).status_code == 200
    assert [f.source for f in PredictionLog(url).feedback()] == ["model"]  # kept, flagged, never trained on


def test_classify_feedback_keeps_its_rules(served):
    client, url, keys = served
    a = keys.create("a")
    body = {"image": b64(png_bytes()), "labels": ["a", "b"]}
    rid = client.post("/v1/classify", json=body, headers=bearer(a)).json()["request_id"]
    post = lambda extra: client.post("/v1/feedback", json={"request_id": rid, **extra}, headers=bearer(a))  # noqa: E731
    assert post({"rating": 3}).json()["error"]["code"] == "missing_accepted"
    assert post({"accepted": False, "answer": "b"}).json()["error"]["code"] == "wrong_field"
    assert post({"accepted": False}).json()["error"]["code"] == "missing_label"
    assert post({"accepted": False, "label": "b", "rating": 2}).status_code == 200
    (row,) = PredictionLog(url).feedback()
    assert (row.accepted, row.label, row.rating) == (False, "b", 2.0)
