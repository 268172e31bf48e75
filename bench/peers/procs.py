"""Start, measure and stop a benchmarked server's whole process tree (for bench/serve_peers.py).

A server runs in its own session, under `strace -f -e trace=connect` where strace may trace; its CPU
time is the sum over its live process tree read from /proc (workers, Ray's raylet and actors...), and
stopping it ends every process it started, by pid, checking start times so a reused pid is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from netguard import is_loopback_host


@dataclass
class System:
    """How to start one served system and what to send it."""

    name: str
    command: list[str]
    env: dict[str, str]
    ready_path: str
    path: str
    body: dict | list  # the JSON body, the same for every client
    headers: list[dict[str, str]] = field(default_factory=lambda: [{}])  # clients take them in turn
    cwd: Path | None = None


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int, skip: int | None = None) -> float:
    """User+system CPU seconds of a process tree's live processes (`skip`: a wrapper such as strace)."""
    total = 0.0
    for pid in process_tree(root):
        if pid == skip:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def strace_destinations(trace: str) -> list[str]:
    """Non-loopback IPv4/IPv6 addresses of the connect() calls in `strace -e trace=connect` output."""
    hosts = re.findall(r'inet_addr\("([^"]+)"\)', trace)
    hosts += re.findall(r'inet_pton\(AF_INET6, "([^"]+)"', trace)
    return sorted({host for host in hosts if not is_loopback_host(host)})


def audit_findings(log: Path) -> list[str]:
    """One line per non-loopback destination the network guard's audit hook recorded (and refused)."""
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [f"{' '.join(r['argv'])}: {r['event']} {r['host']} (audit hook)" for r in records]


def strace_works() -> bool:
    """True when strace exists and may trace here (containers often forbid ptrace)."""
    if shutil.which("strace") is None:
        return False
    probe = ["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=connect", "-o", os.devnull, "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


class Server:
    """One running system: started under strace when it exists, stopped with its whole tree."""

    def __init__(self, system: System, port: int, tmp: Path, use_strace: bool) -> None:
        self.system, self.port = system, port
        self.trace = tmp / f"strace-{system.name}-{port}.txt"
        self.log = tmp / f"server-{system.name}-{port}.log"
        command = system.command
        if use_strace:
            command = [
                "strace",
                "-f",
                "--seccomp-bpf",
                "-qq",
                "-e",
                "trace=connect",
                "-e",
                "signal=none",
                "-o",
                str(self.trace),
                *command,
            ]
        self.wrapped = use_strace
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command, env=system.env, cwd=system.cwd, stdout=log, stderr=log, start_new_session=True
            )

    def cpu_seconds(self) -> float:
        """CPU seconds of the server's process tree so far (not counting strace)."""
        return tree_cpu_seconds(self.proc.pid, skip=self.proc.pid if self.wrapped else None)

    def wait_ready(self, timeout: float = 300) -> None:
        """Block until the readiness path answers 200; the server's log tail on failure."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                url = f"http://127.0.0.1:{self.port}{self.system.ready_path}"
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.system.name} did not become ready on port {self.port}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM every process of the tree (not strace), then SIGKILL whatever is left after 30 s."""
        started = {pid: _start_time(pid) for pid in process_tree(self.proc.pid)}
        servers = [pid for pid in started if not (self.wrapped and pid == self.proc.pid)]
        for pid in servers:
            _signal(pid, signal.SIGTERM)
        deadline = time.time() + 30
        while time.time() < deadline and any(_start_time(pid) == started[pid] for pid in servers):
            time.sleep(0.2)
        for pid, start in started.items():
            if _start_time(pid) == start:  # the same process, not a reused pid
                _signal(pid, signal.SIGKILL)
        self.proc.wait(30)

    def remote_destinations(self) -> list[str]:
        """Non-loopback connect() destinations strace saw."""
        return strace_destinations(self.trace.read_text()) if self.trace.exists() else []


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _start_time(pid: int) -> int | None:
    """When a live process started (clock ticks since boot); None when gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])
