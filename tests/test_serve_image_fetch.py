"""fetch_image: allow-listed http(s) image URLs, with every SSRF and size/time refusal tested.

Names are resolved by a stub (no real DNS); connections go only to a loopback test server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from serve_helpers import png_bytes, serve_in_thread
from vlmops.serve.errors import ApiError
from vlmops.serve.image_fetch import fetch_image, host_allowed, refusal_reason

PNG = png_bytes((10, 200, 10), size=(8, 8))
SEEN_HOSTS: list[str] = []


async def image(request: Request) -> Response:
    SEEN_HOSTS.append(request.headers["host"])
    return Response(PNG, media_type="image/png")


async def endless(request: Request) -> StreamingResponse:
    async def chunks():
        for _ in range(10_000):  # 640 MB if nobody stopped reading
            yield b"\x89" * 65536
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), media_type="image/png")


async def slow(request: Request) -> Response:
    await asyncio.sleep(5)
    return Response(PNG, media_type="image/png")


async def trickle(request: Request) -> StreamingResponse:
    async def chunks():
        for _ in range(50):
            yield b"\x89"
            await asyncio.sleep(0.1)

    return StreamingResponse(chunks(), media_type="image/png")


ROUTES = [
    Route("/img.png", image),
    Route("/redirect", lambda r: RedirectResponse("/img.png", status_code=302)),
    Route("/meta", lambda r: RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=307)),
    Route("/page", lambda r: Response(b"<html></html>", media_type="text/html")),
    Route("/big", lambda r: Response(b"\x89" * 200_000, media_type="image/png")),
    Route("/endless", endless),
    Route("/slow", slow),
    Route("/trickle", trickle),
    Route("/missing", lambda r: Response(b"no", status_code=404)),
]


@pytest.fixture(scope="module")
def port():
    with serve_in_thread(Starlette(routes=ROUTES)) as port:
        yield port


class StubResolver:
    """Answers from a table and counts lookups, so no test touches real DNS."""

    def __init__(self, table: dict[str, list[str]]):
        self.table, self.calls = table, []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return self.table[host]


def fetch(url: str, allow=("127.0.0.1",), max_bytes=100_000, timeout_s=3.0, **options) -> bytes:
    return asyncio.run(fetch_image(url, allow, max_bytes, timeout_s, **options))


def refused(url: str, **options) -> ApiError:
    with pytest.raises(ApiError) as info:
        fetch(url, **options)
    return info.value


def test_fetches_an_image_from_an_allowed_loopback_server(port):
    assert fetch(f"http://127.0.0.1:{port}/img.png", allow_private=True) == PNG


def test_a_name_is_resolved_once_and_the_checked_address_is_used(port):
    resolver = StubResolver({"images.example": ["127.0.0.1"]})
    data = fetch(
        f"http://images.example:{port}/img.png", allow=("*.example",), allow_private=True, resolver=resolver
    )
    assert data == PNG
    assert resolver.calls == ["images.example"]  # one lookup: no rebinding window
    assert SEEN_HOSTS[-1] == f"images.example:{port}"  # connected to 127.0.0.1, the name kept for Host


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.0.1",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "0.0.0.0",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
    ],
)
def test_non_public_literal_addresses_are_refused(address):
    ip = ipaddress.ip_address(address)
    host = f"[{address}]" if ip.version == 6 else address
    error = refused(f"http://{host}/x.png", allow=(address,))
    assert (error.status, error.code) == (422, "image_address_refused")
    assert "public addresses" in error.message and refusal_reason(ip)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::6810:85e5"])
def test_public_addresses_pass_the_check(address):
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("addresses", "needle"),
    [
        (["169.254.169.254"], "link-local"),
        (["127.0.0.1"], "loopback"),
        (["93.184.216.34", "10.0.0.5"], "private"),  # one bad address among good ones is enough
        (["::ffff:127.0.0.1"], "loopback"),
    ],
)
def test_names_resolving_to_non_public_addresses_are_refused(addresses, needle):
    resolver = StubResolver({"evil.example": addresses})
    error = refused("http://evil.example/cat.png", allow=("evil.example",), resolver=resolver)
    assert (error.status, error.code) == (422, "image_address_refused")
    assert needle in error.message


def test_hosts_off_the_allow_list_are_refused_before_any_lookup():
    resolver = StubResolver({"other.example": ["93.184.216.34"]})
    error = refused(
        "https://other.example/a.png", allow=("images.example", "*.cdn.example"), resolver=resolver
    )
    assert (error.status, error.code) == (422, "image_host_not_allowed")
    assert resolver.calls == []
    assert host_allowed("a.b.cdn.example", ["*.cdn.example"]) and not host_allowed(
        "cdn.example.evil", ["*.cdn.example"]
    )
    assert not host_allowed("xcdn.example", ["*.cdn.example"])
    assert host_allowed("Images.Example.", ["images.example"]) and host_allowed("::1", ["[::1]"])


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/a.png", "file:///etc/passwd", "http://user:pw@127.0.0.1/a.png", "gopher://x/"]
)
def test_other_schemes_and_credentials_are_refused(url):
    assert refused(url).code == "bad_image_url"


def test_unresolvable_name_is_a_clear_error():
    error = refused("http://nowhere.example/a.png", allow=("nowhere.example",), resolver=StubResolver({}))
    assert error.code == "image_fetch_failed" and "cannot resolve 'nowhere.example'" in error.message


@pytest.mark.parametrize("path", ["/redirect", "/meta"])
def test_redirects_are_refused_not_followed(port, path):
    before = len(SEEN_HOSTS)
    error = refused(f"http://127.0.0.1:{port}{path}", allow_private=True)
    assert (error.status, error.code) == (422, "image_redirect_refused")
    assert "redirects (HTTP 30" in error.message
    assert len(SEEN_HOSTS) == before  # /img.png was never asked for


def test_content_type_must_be_an_image(port):
    error = refused(f"http://127.0.0.1:{port}/page", allow_private=True)
    assert (error.status, error.code) == (415, "unsupported_image") and "text/html" in error.message


def test_error_status_is_reported(port):
    error = refused(f"http://127.0.0.1:{port}/missing", allow_private=True)
    assert error.code == "image_fetch_failed" and "HTTP 404" in error.message


def test_oversize_is_refused_from_the_length_header_and_mid_stream(port):
    error = refused(f"http://127.0.0.1:{port}/big", allow_private=True)
    assert (error.status, error.code) == (413, "image_too_large") and "200000 bytes" in error.message
    start = time.monotonic()
    error = refused(f"http://127.0.0.1:{port}/endless", allow_private=True)  # no Content-Length
    assert (error.status, error.code) == (413, "image_too_large")
    assert "more than 100000 bytes" in error.message
    assert time.monotonic() - start < 2.0  # stopped reading at the cap, not after 640 MB


@pytest.mark.parametrize("path", ["/slow", "/trickle"])
def test_slow_servers_time_out(port, path):
    start = time.monotonic()
    error = refused(f"http://127.0.0.1:{port}{path}", allow_private=True, timeout_s=0.5)
    assert (error.status, error.code) == (504, "image_fetch_timeout")
    assert time.monotonic() - start < 1.5


def test_loopback_is_refused_without_allow_private(port):
    error = refused(f"http://127.0.0.1:{port}/img.png")
    assert error.code == "image_address_refused" and "loopback" in error.message


def self_signed(tmp_path, name: str) -> tuple[str, str]:
    """(cert file, key file) of a self-signed certificate for DNS name `name`."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_file), str(key_file)


def test_https_connects_to_the_checked_address_and_verifies_the_name(tmp_path):
    import ssl
    import threading

    import uvicorn

    from serve_helpers import free_port

    cert, key = self_signed(tmp_path, "images.example")
    tls_port = free_port()
    config = uvicorn.Config(
        Starlette(routes=ROUTES),
        host="127.0.0.1",
        port=tls_port,
        log_level="critical",
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        trust = ssl.create_default_context(cafile=cert)
        resolver = StubResolver({"images.example": ["127.0.0.1"], "wrong.example": ["127.0.0.1"]})
        options = {"allow_private": True, "resolver": resolver, "verify": trust}
        url = f"https://images.example:{tls_port}/img.png"
        assert fetch(url, allow=("images.example",), **options) == PNG
        error = refused(f"https://wrong.example:{tls_port}/img.png", allow=("wrong.example",), **options)
        assert error.code == "image_fetch_failed" and "certificate" in error.message.lower()
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001"])
def test_numeric_spellings_of_loopback_are_refused_after_resolution(host):
    # the system resolver reads these as 127.0.0.1 without any DNS query (inet_aton forms)
    error = refused(f"http://{host}/x.png", allow=(host,))
    assert error.code == "image_address_refused" and "127.0.0.1" in error.message


def test_an_octal_spelling_is_not_a_url():
    assert refused("http://0177.0.0.1/x.png", allow=("0177.0.0.1",)).code == "bad_image_url"
