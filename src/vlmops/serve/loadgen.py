"""A lean asyncio HTTP/1.1 load generator for loopback servers (benchmarks and reliability tests).

Each virtual client holds one keep-alive connection and sends the same pre-built request bytes in a
closed loop, reading only the status line, headers and Content-Length body. That costs far less CPU
per request than a general-purpose client, which matters when client and server share two cores.
Loops are bounded by a request count and a duration, and the target must be a loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    """Outcome of one load run."""

    statuses: dict[int, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)  # of 200 answers, when collected
    errors: int = 0  # connection failures (refused, reset)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        """Number of 200 answers."""
        return self.statuses.get(200, 0)

    def summary(self) -> dict:
        """Throughput and latency percentiles of the 200 answers."""
        lat = np.asarray(self.latencies_s) * 1000
        return {
            "requests": sum(self.statuses.values()),
            "ok": self.ok,
            "per_s": self.ok / self.seconds if self.seconds else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
        }


def build_request(
    host: str, port: int, path: str, body: dict, headers: dict[str, str] | None = None
) -> bytes:
    """HTTP/1.1 POST with a JSON body, ready to send repeatedly."""
    payload = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: keep-alive",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def _check_loopback(host: str) -> None:
    address = ipaddress.ip_address(socket.gethostbyname(host))
    if not address.is_loopback:
        raise ValueError(f"load generation is for loopback servers only, not {host}")


async def _read_response(reader: asyncio.StreamReader, want_id: bool) -> tuple[int, str | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, request_id = 0, None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.lower()
        if name == "content-length":
            length = int(value)
        elif want_id and name == "x-request-id":
            request_id = value.strip()
    if length:
        await reader.readexactly(length)
    return status, request_id


async def run_load(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    collect_ids: bool = False,
) -> LoadResult:
    """Drive `concurrency` closed-loop clients until `max_requests` are sent or `max_seconds` pass."""
    _check_loopback(host)
    result = LoadResult()
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal sent
        reader = writer = None
        while sent < max_requests and time.perf_counter() < deadline:
            sent += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                start = time.perf_counter()
                writer.write(request)
                status, request_id = await _read_response(reader, collect_ids)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.latencies_s.append(time.perf_counter() - start)
                if request_id:
                    result.request_ids.append(request_id)
        if writer is not None:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


async def run_open_loop(
    host: str, port: int, request: bytes, rate_per_s: float, seconds: float, max_connections: int = 256
) -> LoadResult:
    """Send requests at a fixed rate whatever the server's speed (an open loop, unlike `run_load`).

    Requests that find every connection busy wait for one; at most `max_connections` are open.
    """
    _check_loopback(host)
    result = LoadResult()
    idle: asyncio.Queue = asyncio.Queue()
    opened = 0
    slots = asyncio.Semaphore(max_connections)

    async def one() -> None:
        nonlocal opened
        async with slots:
            conn = idle.get_nowait() if not idle.empty() else None
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                    opened += 1
                reader, writer = conn
                writer.write(request)
                status, _ = await _read_response(reader, False)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                if conn is not None:
                    conn[1].close()
                return
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.latencies_s.append(time.perf_counter() - start)
            idle.put_nowait(conn)

    tasks = []
    begin = time.perf_counter()
    n = int(rate_per_s * seconds)
    for i in range(n):
        delay = begin + i / rate_per_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - begin
    while not idle.empty():
        idle.get_nowait()[1].close()
    return result
