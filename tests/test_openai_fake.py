"""The test and bench upstream (tests/openai_fake.py) keeps its own pace: bench/gateway_proxy.py's
added latency is only the proxy's if the upstream's timing does not depend on who reads it."""

from __future__ import annotations

import asyncio
import time

from openai_fake import FakeServer, _chunks


def stream_seconds(paced_by_clock: bool, tokens: int = 10, delay_s: float = 0.01) -> float:
    """Seconds to read a stream of `tokens` whose reader blocks this process 30 ms after the 2nd event
    (a late wake-up on a busy machine)."""
    server = FakeServer(key=None, token_delay_s=delay_s, paced_by_clock=paced_by_clock)

    async def read() -> float:
        start = time.perf_counter()
        usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
        events = 0
        async for _ in _chunks([f" t{i}" for i in range(tokens)], "stop", usage, {}, server):
            events += 1
            if events == 2:
                time.sleep(0.03)  # the whole loop stalls, the fake's timers too
        return time.perf_counter() - start

    return asyncio.run(read())


def test_a_late_wake_up_does_not_lengthen_a_stream_paced_by_its_clock():
    clock, sleep = stream_seconds(True), stream_seconds(False)
    assert 0.1 <= clock < 0.125, clock  # 10 tokens x 10 ms: the stall is made up by the next tokens
    assert sleep >= 0.13, sleep  # a sleep after each token: the 30 ms stall adds to the stream
