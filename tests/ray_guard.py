"""Run Ray's processes where we can see every connection they make, and stop exactly them afterwards.

`Guard` gives each command it starts an environment with bench/peers/netguard on PYTHONPATH, so every
Python process among them and their descendants (the CLI, Ray's dashboard, workers, actors) gets the
audit hook that records and refuses any non-loopback destination of connect/sendto/getaddrinfo; and,
where strace may trace, runs each command under `strace -f -e trace=connect`, which also sees the
native processes (raylet, GCS) and every descendant however detached. `findings()` lists every
non-loopback destination either saw. Each command's environment carries a marker (the guard's log
path), so `stop()` ends every process that has it, by pid, and nothing else (other Ray instances on
the machine are left alone; `ray stop` would kill them too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NETGUARD = REPO / "bench" / "peers" / "netguard"
sys.path.insert(0, str(NETGUARD))
sys.path.insert(0, str(REPO / "bench" / "peers"))

from netguard import LOG_ENV  # noqa: E402
from procs import audit_findings, strace_destinations, strace_works  # noqa: E402

from vlmops.config import get_settings  # noqa: E402
from vlmops.scale.cluster import loopback_env  # noqa: E402

STRACE = ["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=connect", "-e", "signal=none"]


class Guard:
    """Environment, tracing and clean-up for the processes of one Ray test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log = tmp / "netguard.jsonl"
        self.use_strace = strace_works()
        self.traces: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        env = dict(os.environ)
        paths = [str(NETGUARD), str(REPO / "src"), str(REPO / "tests"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env[LOG_ENV] = str(self.log)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.update(loopback_env(tmp / "home"), VLMOPS_RAY_HOME=str(tmp / "home"))
        env["VLMOPS_HOME"] = str(get_settings().home)  # HOME moved: keep the data where it is
        self.env = env

    def command(self, argv: list[str], name: str) -> list[str]:
        """`argv` under strace (output to a trace file of its own) when strace works here."""
        if not self.use_strace:
            return argv
        trace = self.tmp / f"strace-{name}-{len(self.traces)}.txt"
        self.traces.append(trace)
        return [*STRACE, "-o", str(trace), *argv]

    def run(
        self, argv: list[str], name: str, timeout: float = 600, unset: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess:
        """Run a command to completion under the guard, without the variables `unset`; its output is
        captured as text."""
        return subprocess.run(
            self.command(argv, name),
            env={key: value for key, value in self.env.items() if key not in unset},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
        )

    def start(self, argv: list[str], name: str, **env: str) -> subprocess.Popen:
        """Start a long-running command (e.g. `ray start --block`) under the guard, in its own session."""
        log = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            self.command(argv, name),
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def findings(self) -> list[str]:
        """Every non-loopback destination the audit hook or strace saw."""
        found = audit_findings(self.log)
        for trace in self.traces:
            if trace.exists():
                hosts = strace_destinations(trace.read_text())
                found += [f"{trace.name}: connect {host} (strace)" for host in hosts]
        return found

    def loopback_connects(self) -> int:
        """How many connect() calls to 127.0.0.1 strace saw: proof that it watched the Ray processes."""
        return sum(t.read_text().count('inet_addr("127.0.0.1")') for t in self.traces if t.exists())

    def ours(self) -> list[int]:
        """Live processes started under this guard: their environment holds the guard's log path, or
        they run in the guard's folder. (Ray's agents write their process title over the start of their
        environment, marker included: a head node's dashboard and runtime-env agents, missed by the
        marker, outlived a SIGTERMed `ray start --block` by minutes.)"""
        marker = f"{LOG_ENV}={self.log}".encode()
        folder = str(self.tmp.resolve())
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    env = (entry / "environ").read_bytes().split(b"\0")
                    if marker in env or os.readlink(entry / "cwd") == folder:
                        pids.append(int(entry.name))
        return pids

    def stop(self, grace: float = 20) -> None:
        """SIGTERM every process of this guard, SIGKILL those left after `grace` seconds; reap them."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            pids = self.ours()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.time() + wait
            while pids and time.time() < deadline:
                time.sleep(0.3)
                for proc in self.procs:
                    proc.poll()
                pids = [pid for pid in pids if _alive(pid)]
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
