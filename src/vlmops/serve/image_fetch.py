"""Fetching an ``image_url`` that is an http(s) URL, for hosts the operator allow-listed, safely.

A gateway that fetches URLs for its clients is an SSRF tool unless it checks where it connects. Here:
the host must be on the allow-list (exact, or ``*.example.com`` for subdomains); the name is resolved
once and every address it resolves to must be public (not private, loopback, link-local — the cloud
metadata service at 169.254.169.254 —, multicast, reserved, unspecified, shared or IPv4 embedded in
IPv6 as one of those) unless ``allow_private``; the connection goes to the address that was checked
(no second lookup a DNS-rebinding server could answer differently; TLS still verifies the name);
redirects are refused, not followed; the body must be an image, at most ``max_bytes`` (counted while
it arrives), and the whole fetch must end within ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable

import httpx

from vlmops.serve.errors import ApiError

Resolver = Callable[[str, int], Awaitable[list[str]]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for `host` (one lookup)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal_reason(address: Address) -> str | None:
    """Why connecting to `address` is refused (a name such as "loopback"), or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = refusal_reason(embedded)
            return f"{reason} (inside the IPv6 address)" if reason else None
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local (the cloud metadata service lives there)", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def host_allowed(host: str, allow_hosts: Iterable[str]) -> bool:
    """Whether `host` is on the allow-list: an exact name or address, or under a ``*.domain`` entry.

    Entries are host names or addresses only (no ports or schemes); matching ignores case and a
    trailing dot.
    """
    host = host.lower().rstrip(".")
    for entry in allow_hosts:
        entry = entry.strip().strip("[]").lower().rstrip(".")  # "[::1]" names the host "::1"
        if entry == host or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


async def fetch_image(
    url: str,
    allow_hosts: Iterable[str],
    max_bytes: int,
    timeout_s: float,
    allow_private: bool = False,
    *,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
    field: str = "image_url",
) -> bytes:
    """The bytes of the image at `url`, or an ApiError saying which safety rule refused it.

    `resolver` replaces the system's name lookup (tests); `verify` is the TLS trust (a private CA's
    context, say): certificates are always checked against the URL's host name, not the address.
    """
    parsed = _parse(url, field)
    host = parsed.host.lower().rstrip(".")
    allow_hosts = tuple(allow_hosts)
    if not host_allowed(host, allow_hosts):
        raise ApiError(
            422,
            "image_host_not_allowed",
            f"{field}: host {host!r} is not on the gateway's image host allow-list "
            f"({', '.join(allow_hosts) or 'empty'}); send the image as a data: URL instead",
        )
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout_s):
            address = await _checked_address(host, port, allow_private, resolver or system_resolver, field)
            return await _download(parsed, host, address, max_bytes, verify, field)
    except TimeoutError:
        raise ApiError(
            504, "image_fetch_timeout", f"{field}: {url} was not fetched within {timeout_s:g} s"
        ) from None


def _parse(url: str, field: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ApiError(422, "bad_image_url", f"{field}: {url[:100]!r} is not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ApiError(422, "bad_image_url", f"{field}: only data:, http: and https: image URLs are accepted")
    if parsed.userinfo:
        raise ApiError(422, "bad_image_url", f"{field}: image URLs with a user name or password are refused")
    return parsed


async def _checked_address(
    host: str, port: int, allow_private: bool, resolver: Resolver, field: str
) -> Address:
    """The one address to connect to: the literal, or the first the name resolves to, all checked."""
    addresses = await _addresses(host, port, resolver, field)
    if not allow_private:
        for address in addresses:
            reason = refusal_reason(address)
            if reason:
                raise ApiError(
                    422,
                    "image_address_refused",
                    f"{field}: {host!r} is {address}, a {reason} address; the gateway only fetches "
                    "images from public addresses",
                )
    return addresses[0]


async def _addresses(host: str, port: int, resolver: Resolver, field: str) -> list[Address]:
    """`host` as a literal address, else what one lookup of the name gives."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await resolver(host, port)]
    except (OSError, ValueError) as exc:
        raise ApiError(422, "image_fetch_failed", f"{field}: cannot resolve {host!r} ({exc})") from None
    if not addresses:
        raise ApiError(422, "image_fetch_failed", f"{field}: {host!r} resolves to no address")
    return addresses


async def _download(
    parsed: httpx.URL, host: str, address: Address, max_bytes: int, verify: ssl.SSLContext | bool, field: str
) -> bytes:
    target = parsed.copy_with(host=str(address))
    headers = {"Host": parsed.netloc.decode("ascii"), "Accept": "image/*"}
    extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
    async with httpx.AsyncClient(
        trust_env=False, follow_redirects=False, timeout=None, verify=verify
    ) as client:
        try:
            request = client.build_request("GET", target, headers=headers, extensions=extensions)
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise ApiError(
                422, "image_fetch_failed", f"{field}: cannot fetch {parsed} ({type(exc).__name__}: {exc})"
            ) from None
        try:
            _check_response(response, parsed, max_bytes, field)
            return await _read_capped(response, parsed, max_bytes, field)
        finally:
            await response.aclose()


def _check_response(response: httpx.Response, url: httpx.URL, max_bytes: int, field: str) -> None:
    status = response.status_code
    if 300 <= status < 400:
        raise ApiError(
            422,
            "image_redirect_refused",
            f"{field}: {url} redirects (HTTP {status} to {response.headers.get('location', '?')}); "
            "redirects are not followed: send the final URL",
        )
    if status != 200:
        raise ApiError(422, "image_fetch_failed", f"{field}: {url} answered HTTP {status}")
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not kind.startswith("image/"):
        raise ApiError(
            415, "unsupported_image", f"{field}: {url} is {kind or 'untyped'}, not an image (image/*)"
        )
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise _too_large(url, f"{int(length)} bytes", max_bytes, field)


async def _read_capped(response: httpx.Response, url: httpx.URL, max_bytes: int, field: str) -> bytes:
    chunks, size = [], 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(url, f"more than {max_bytes} bytes", max_bytes, field)
            chunks.append(chunk)
    except httpx.TransportError as exc:
        raise ApiError(
            422, "image_fetch_failed", f"{field}: {url} broke off ({type(exc).__name__}: {exc})"
        ) from None
    return b"".join(chunks)


def _too_large(url: httpx.URL, size: str, max_bytes: int, field: str) -> ApiError:
    return ApiError(
        413, "image_too_large", f"{field}: {url} is {size}; the gateway fetches at most {max_bytes} bytes"
    )
