"""The two ways the gateway answers /v1/chat/completions: a served local model or a proxied upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass
class ChatOutcome:
    """What the log records about one answer (complete, or partial when the client went away)."""

    text: str
    finish_reason: str | None
    tokens_in: int | None
    tokens_out: int | None
    ttft_s: float | None
    model: str
    status: str = "ok"  # "ok", "cancelled" (client disconnected mid-stream) or "error"


class ChatStream(Protocol):
    """An SSE answer: iterate for the event bytes (each b"data: {...}\\n\\n", last b"data: [DONE]\\n\\n");
    `aclose()` stops early and cancels the generation or the upstream request; `outcome` is valid
    after the iteration ended or after aclose()."""

    outcome: ChatOutcome

    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class ChatBackend(Protocol):
    mode: str  # "local" or "upstream"

    async def complete(self, body: dict, deadline: float) -> tuple[dict, ChatOutcome]:
        """A non-streamed answer: the chat.completion JSON to send, and what to log."""

    def stream(self, body: dict, deadline: float) -> ChatStream:
        """A streamed answer (body["stream"] is true)."""
