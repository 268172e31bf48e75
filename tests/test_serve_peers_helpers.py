"""Pure helpers of `bench/serve_peers.py` and `bench/peers/` (procs, netguard): the loopback classifier
and network-guard hook it relies on to prove no benchmarked server touched the network, the strace
parser, and the per-point summary."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "peers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "peers" / "netguard"))
import netguard
import procs

import serve_peers


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "[::1]",
        "localhost",
        "LOCALHOST.",
        "0.0.0.0",
        "::",
        "::ffff:127.0.0.1",
        b"127.0.0.1",
        None,
        "",
        "::1%lo",
    ],
)
def test_loopback_hosts(host):
    assert netguard.is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "10.0.0.1",
        "8.8.8.8",
        "::ffff:169.254.169.254",
        "2001:db8::1",
        "example.com",
        "metadata.google.internal",
        "localhost.example.com",
        "127.0.0.1.nip.io",
        12345,
    ],
)
def test_remote_hosts(host):
    assert not netguard.is_loopback_host(host)


def test_destination_of_socket_events():
    inet, unix = socket.socket(), socket.socket(socket.AF_UNIX)
    try:
        assert netguard.destination("socket.connect", (inet, ("169.254.169.254", 80))) == "169.254.169.254"
        assert netguard.destination("socket.connect", (inet, ("127.0.0.1", 80))) is None
        assert netguard.destination("socket.sendto", (inet, ("10.1.1.1", 53))) == "10.1.1.1"
        assert netguard.destination("socket.connect", (unix, "/tmp/some.sock")) is None
    finally:
        inet.close()
        unix.close()
    assert netguard.destination("socket.getaddrinfo", ("pypi.org", 443, 0, 0, 0)) == "pypi.org"
    assert netguard.destination("socket.getaddrinfo", ("localhost", 443, 0, 0, 0)) is None
    assert netguard.destination("open", ("/etc/hosts", "r", 0)) is None


def test_strace_destinations_keep_only_remote_addresses():
    trace = "\n".join(
        [
            "12 connect(3, {sa_family=AF_INET, sin_port=htons(80), "
            'sin_addr=inet_addr("169.254.169.254")}, 16) = -1 EINPROGRESS',
            "12 connect(4, {sa_family=AF_INET, sin_port=htons(8000), "
            'sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
            "13 connect(5, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = -1 ENETUNREACH',
            "13 connect(6, {sa_family=AF_INET6, sin6_port=htons(1), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            '14 connect(7, {sa_family=AF_UNIX, sun_path="/tmp/ray/session/sockets/raylet"}, 110) = 0',
        ]
    )
    assert procs.strace_destinations(trace) == ["169.254.169.254", "2001:db8::1"]


def test_summary_medians_spread_and_ratios():
    def row(system, c, per_s, p50):
        return {
            "system": system,
            "concurrency": c,
            "per_s": per_s,
            "p50_ms": p50,
            "p99_ms": 2 * p50,
            "server_cpu_ms_per_request": 3.0,
        }

    rows = [row("vlmops", 1, x, p) for x, p in ((50, 12), (60, 10), (40, 11))]
    rows += [row("bentoml", 1, x, p) for x, p in ((70, 9), (90, 8), (80, 10))]
    rows += [row("litserve", 1, x, p) for x, p in ((85, 10), (60, 12), (70, 11))]
    rows += [row("vlmops", 32, 600, 50), row("bentoml", 32, 500, 60), row("litserve", 32, 400, 70)]
    summary = serve_peers.summarise(rows)
    assert summary[("vlmops", 1)]["per_s"] == (50, 40, 60)
    assert summary[("bentoml", 1)]["p50_ms"] == (9, 8, 10)
    found = serve_peers.ratios(summary, [1, 32])
    assert found["throughput_c1"] == {"best_peer": "bentoml", "ratio": 50 / 80}
    assert found["p50_c1"] == {"best_peer": "bentoml", "ratio": 11 / 9}
    assert found["throughput_c32"] == {"best_peer": "bentoml", "ratio": 600 / 500}


def test_guard_records_what_it_refuses_and_the_script_reports_it(tmp_path, monkeypatch):
    log = tmp_path / "netguard.jsonl"
    monkeypatch.setenv(netguard.LOG_ENV, str(log))
    inet = socket.socket()
    try:
        with pytest.raises(PermissionError, match=r"169\.254\.169\.254"):
            netguard._hook("socket.connect", (inet, ("169.254.169.254", 80)))
        netguard._hook("socket.connect", (inet, ("127.0.0.1", 80)))  # loopback: allowed, not recorded
    finally:
        inet.close()
    findings = procs.audit_findings(log)
    assert len(findings) == 1
    assert "socket.connect 169.254.169.254 (audit hook)" in findings[0]
    assert procs.audit_findings(tmp_path / "absent.jsonl") == []
