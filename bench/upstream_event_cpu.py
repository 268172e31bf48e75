"""CPU of `UpstreamStream`'s own per-event path, without the network: µs per event passed on.

Drives ``UpstreamStream.__anext__`` over a 32-token answer (role chunk, 32 content chunks, finish,
usage, [DONE]) whose upstream body is an in-memory iterator, so what is timed is the stream's own
work per event (deadline handling, SSE framing, the JSON parse and the accounting for the log), not
aiohttp's reads or the socket. Run it against two checkouts to compare:

    PYTHONPATH=src python bench/upstream_event_cpu.py
    PYTHONPATH=/work/main/src python bench/upstream_event_cpu.py
"""

from __future__ import annotations

import asyncio
import json
import time

from vlmops.serve.upstream import UpstreamBackend
from vlmops.serve.upstream_stream import UpstreamStream


def answer(tokens: int = 32) -> list[bytes]:
    """The upstream's body, one chunk per event, as tests/openai_fake.py sends it."""

    def event(choices: list, **extra) -> bytes:
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices, **extra}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    out = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    for i in range(tokens):
        out.append(event([{"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}]))
    out.append(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    out.append(event([], usage={"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": tokens + 5}))
    return [*out, b"data: [DONE]\n\n"]


async def body(chunks: list[bytes]):
    for chunk in chunks:
        yield chunk


async def per_event_us(streams: int, chunks: list[bytes]) -> float:
    backend = UpstreamBackend("http://127.0.0.1:9/v1")  # never contacted: the body is in memory
    events = 0
    start = time.perf_counter()
    for _ in range(streams):
        stream = UpstreamStream(backend, {"model": "m"}, time.monotonic() + 60, None)
        stream._response, stream._chunks = object(), body(chunks)  # as if the upstream had answered
        while await stream.__anext__() != b"data: [DONE]\n\n":
            events += 1
        events += 1
    return (time.perf_counter() - start) / events * 1e6


def main() -> None:
    chunks = answer()
    runs = [asyncio.run(per_event_us(3000, chunks)) for _ in range(5)]
    print(f"UpstreamStream per event: best {min(runs):.2f} µs, runs " + " ".join(f"{r:.2f}" for r in runs))


if __name__ == "__main__":
    main()
