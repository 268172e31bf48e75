"""Refuse and record every socket destination that is not this machine's loopback (stdlib only).

`bench/serve_peers.py` puts this folder on each benchmarked server's PYTHONPATH, so `sitecustomize`
imports it at interpreter start (in every venv and every worker process) and installs an audit hook on
the "socket.connect", "socket.sendto" and "socket.getaddrinfo" events. A destination outside loopback is
appended to the file named by VLMOPS_NETGUARD_LOG (one JSON line) and refused with PermissionError.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import threading

LOG_ENV = "VLMOPS_NETGUARD_LOG"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_busy = threading.local()


def is_loopback_host(host: object) -> bool:
    """True when `host` (a name, an IP literal, bytes, or None) can only mean this machine's loopback.

    The unspecified addresses (0.0.0.0, ::) count as local: Linux connects them to loopback. Any other
    name counts as remote, since resolving it may already ask a DNS server.
    """
    if host is None or host == "" or host == b"":
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip().strip("[]").split("%", 1)[0].rstrip(".").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def destination(event: str, args: tuple) -> str | None:
    """The remote host an audited socket event is about, or None when it stays on this machine."""
    if event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
            return None  # unix sockets, netlink: never leave the machine
        host = address[0] if isinstance(address, tuple) and address else address
    elif event == "socket.getaddrinfo":
        host = args[0]
    else:
        return None
    return None if is_loopback_host(host) else str(host)


def _hook(event: str, args: tuple) -> None:
    if not event.startswith("socket.") or getattr(_busy, "on", False):
        return
    remote = destination(event, args)
    if remote is None:
        return
    _busy.on = True
    try:
        with open(os.environ[LOG_ENV], "a") as log:
            record = {"pid": os.getpid(), "event": event, "host": remote, "argv": sys.argv[:3]}
            log.write(json.dumps(record) + "\n")
    finally:
        _busy.on = False
    raise PermissionError(f"netguard: {event} to non-loopback {remote!r} refused (bench/serve_peers.py)")


def install_from_env() -> bool:
    """Install the audit hook when VLMOPS_NETGUARD_LOG names a file; True when installed."""
    if not os.environ.get(LOG_ENV):
        return False
    sys.addaudithook(_hook)
    return True
