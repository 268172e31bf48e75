"""OpenAI chat.completion bodies and SSE chunks, built from plain values."""

from __future__ import annotations

import json
import re
import time

DONE = b"data: [DONE]\n\n"
_PIECES = re.compile(r"\s*\S+\s*$|\s*\S+")
_FIRST_ID = re.compile(rb'data: \{\s*"id"\s*:\s*"(?:[^"\\]|\\.)*"')  # a chunk whose first key is its id


def sse(payload: dict) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def with_id(event: bytes, id_json: bytes) -> bytes:
    """An SSE chunk event (``data: {...}``) with its ``id`` set to `id_json` (a JSON string literal).

    When ``id`` is the chunk's first key, as OpenAI-compatible servers and `chunk` send it, the bytes
    are spliced (the rest passes through untouched); otherwise the chunk is parsed and re-serialised.
    """
    found = _FIRST_ID.match(event)
    if found is not None:
        return b'data: {"id":' + id_json + event[found.end() :]
    payload = json.loads(event[6:])
    payload["id"] = json.loads(id_json)
    return sse(payload)


def usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict:
    """The `usage` object (0 where a count is unknown, as OpenAI clients expect integers)."""
    p, c = prompt_tokens or 0, completion_tokens or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def logprobs_content(tokens, logprobs) -> dict | None:
    """`choice.logprobs` for the chosen tokens (no alternatives: top_logprobs is empty)."""
    if tokens is None or logprobs is None:
        return None
    return {
        "content": [
            {"token": t, "logprob": float(lp), "bytes": list(t.encode()), "top_logprobs": []}
            for t, lp in zip(tokens, logprobs, strict=False)
        ],
        "refusal": None,
    }


def completion(model: str, fingerprint: str, choices: list[dict], usage_: dict) -> dict:
    """A chat.completion body; `id` is set by the route (the request id)."""
    return {
        "id": "",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
        "usage": usage_,
    }


def choice(index: int, text: str, finish_reason: str, logprobs: dict | None) -> dict:
    """One choice of a chat.completion."""
    return {
        "index": index,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def chunk(
    model: str,
    fingerprint: str,
    index: int | None,
    delta: dict | None = None,
    finish_reason: str | None = None,
    logprobs: dict | None = None,
    usage_: dict | None = None,
) -> dict:
    """A chat.completion.chunk: one choice's delta, or (index None) the final usage chunk."""
    body = {
        "id": "",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": []
        if index is None
        else [{"index": index, "delta": delta or {}, "logprobs": logprobs, "finish_reason": finish_reason}],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def pieces(text: str) -> list[str]:
    """`text` cut into word-sized pieces (each with its leading space) that join back to it exactly."""
    found = _PIECES.findall(text)
    return found if "".join(found) == text else [text]


def apply_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` cut before the first stop sequence; True when one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)
