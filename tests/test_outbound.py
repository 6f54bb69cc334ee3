"""Outbound safety: hostile platform URLs are refused, public ones pinned to the checked address, no redirects."""

from __future__ import annotations

import ipaddress
import json
import socket

import httpx
import pytest

from activities.outbound import (
    HostUnresolvable,
    OutboundPolicy,
    OutboundRefused,
    PinnedTransport,
    Target,
    address_problem,
    pinned_client,
    post_json,
    resolve_public,
)
from tests.receiver import Receiver

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
STRICT = OutboundPolicy()
DEV = OutboundPolicy(allow_private=True)


class FakeDNS:
    """An injected resolver with getaddrinfo's shape; counts lookups; no real DNS is ever asked."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = {
            "platform-b.example": [PUBLIC_V4],
            "dual.example": [PUBLIC_V4, PUBLIC_V6],
            "v6only.example": [PUBLIC_V6],
            "mapped-public.example": ["::ffff:" + PUBLIC_V4],
            "127.0.0.1.nip.io": ["127.0.0.1"],
            "10.0.0.5.sslip.io": ["10.0.0.5"],
            "rebind.example": [PUBLIC_V4, "10.0.0.5"],
            "rebind6.example": [PUBLIC_V6, "::1"],
            "metadata-alias.example": ["169.254.169.254"],
            "mapped.example": ["::ffff:192.168.1.1"],
            "nat64.example": ["64:ff9b::a9fe:a9fe"],
            "cgnat.example": ["100.64.0.1"],
            "ula.example": ["fd12:3456::1"],
            "platform-b.test": ["127.0.0.1"],
            "other.test": ["127.0.0.1"],
            "localhost": ["127.0.0.1", "::1"],
            "redis": ["10.0.0.7"],
            **(table or {}),
        }
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int, **kwargs: object) -> list[tuple]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for ip in self.table[host]:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out


# (url, words the refusal must contain)
HOSTILE = [
    # IPv4 literals in every form clients accept
    ("https://127.0.0.1/", "127.0.0.1 is a loopback address"),
    ("https://127.0.0.1:6379/", "loopback"),
    ("https://2130706433/", "127.0.0.1 is a loopback"),
    ("https://0177.0.0.1/", "127.0.0.1 is a loopback"),
    ("https://0x7f.0.0.1/", "127.0.0.1 is a loopback"),
    ("https://0x7f000001/", "127.0.0.1 is a loopback"),
    ("https://127.1/", "127.0.0.1 is a loopback"),
    ("https://127.0.1/", "127.0.0.1 is a loopback"),
    ("https://017700000001/", "127.0.0.1 is a loopback"),
    ("https://127.0.0.1./", "127.0.0.1 is a loopback"),
    ("https://１２７。０。０。１/", "127.0.0.1 is a loopback"),
    ("https://0/", "0.0.0.0 is the unspecified address"),
    ("https://0.0.0.0:8000/", "unspecified"),
    ("https://10.0.0.5/", "10.0.0.5 is a private address"),
    ("https://172.16.3.4/", "private"),
    ("https://192.168.1.1/", "private"),
    ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("https://0xa9fea9fe/", "169.254.169.254 is a cloud metadata address"),
    ("https://169.254.1.1/", "link-local"),
    ("https://100.64.0.1/", "carrier-grade NAT"),
    ("https://100.100.100.200/", "cloud metadata"),
    ("https://0.1.2.3/", "this network"),
    ("https://192.0.2.10/", "documentation"),
    ("https://198.18.0.1/", "benchmarking"),
    ("https://224.0.0.1/", "multicast"),
    ("https://255.255.255.255/", "broadcast"),
    ("https://240.0.0.1/", "reserved"),
    ("https://1.2.3.4.5/", "not a valid one"),
    ("https://0189.0.0.1/", "not a valid one"),
    ("https://256.0.0.1/", "not a valid one"),
    # IPv6 literals, including forms embedding an IPv4 address
    ("https://[::1]/", "::1 is a loopback address"),
    ("https://[::]/", "unspecified"),
    ("https://[0:0:0:0:0:0:0:1]:8443/", "loopback"),
    ("https://[::ffff:127.0.0.1]/", "IPv4-mapped address of 127.0.0.1, a loopback address"),
    ("https://[::ffff:7f00:1]/", "IPv4-mapped address of 127.0.0.1"),
    ("https://[::ffff:169.254.169.254]/", "IPv4-mapped address of 169.254.169.254, a cloud metadata address"),
    ("https://[::127.0.0.1]/", "IPv4-compatible"),
    ("https://[64:ff9b::10.0.0.5]/", "NAT64 address of 10.0.0.5, a private address"),
    ("https://[64:ff9b::7f00:1]/", "NAT64 address of 127.0.0.1"),
    ("https://[64:ff9b:1::a00:5]/", "local-use NAT64"),
    ("https://[2002:7f00:1::1]/", "6to4 address of 127.0.0.1, a loopback address"),
    ("https://[2002:a9fe:a9fe::]/", "6to4 address of 169.254.169.254"),
    ("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo"),
    ("https://[fe80::1%25eth0]/", "zone id"),
    ("https://[fe80::1]/", "link-local"),
    ("https://[fd00:ec2::254]/", "cloud metadata"),
    ("https://[fc00::5]/", "unique local"),
    ("https://[2001:db8::1]/", "documentation"),
    ("https://[ff02::1]/", "multicast"),
    ("https://::1/", "must be in brackets"),
    # names
    ("https://localhost/", "localhost is a loopback name"),
    ("https://LOCALHOST.:8080/", "localhost is a loopback name"),
    ("https://api.localhost/", "loopback name"),
    ("https://metadata.google.internal/computeMetadata/v1/", "cloud metadata host name"),
    ("https://metadata/", "cloud metadata host name"),
    ("https://instance-data/", "cloud metadata host name"),
    ("https://vault.internal/", "internal name"),
    ("https://redis/", "single-label name"),
    ("https://127.0.0.1.nip.io/", "127.0.0.1.nip.io resolves to 127.0.0.1, a loopback address"),
    ("https://10.0.0.5.sslip.io/", "resolves to 10.0.0.5, a private address"),
    ("https://rebind.example/", "rebind.example resolves to 10.0.0.5, a private address"),
    ("https://rebind6.example/", "resolves to ::1, a loopback address"),
    ("https://metadata-alias.example/", "resolves to 169.254.169.254, a cloud metadata address"),
    ("https://mapped.example/", "IPv4-mapped address of 192.168.1.1, a private address"),
    ("https://nat64.example/", "NAT64 address of 169.254.169.254"),
    ("https://cgnat.example/", "carrier-grade NAT"),
    ("https://ula.example/", "unique local"),
    # userinfo and parser tricks
    ("http://public.example@127.0.0.1/", "credentials in the URL"),
    ("https://user:pass@platform-b.example/", "credentials in the URL"),
    ("https://platform-b.example@10.0.0.5:443/", "credentials in the URL"),
    ("https://platform-b.example\\@127.0.0.1/", "backslash"),
    ("https://127.0.0.1%2e/", "'%' escape"),
    ("https://platform b.example/", "whitespace"),
    ("https://[::1/", "cannot be parsed"),
    ("https://evil_.example:99999/", "port"),
    ("https://platform-b.example:0/", "port"),
    ("https://platform-b.example:-1/", "port"),
    # schemes and empty hosts
    ("file:///etc/passwd", "only http:// and https://"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "only http:// and https://"),
    ("ftp://platform-b.example/", "only http:// and https://"),
    ("dict://127.0.0.1:11211/", "only http:// and https://"),
    ("platform-b.example", "only http:// and https://"),
    ("//platform-b.example/", "only http:// and https://"),
    ("https://", "no host"),
    ("https:///path", "no host"),
    ("https://:443/", "no host"),
    ("", "empty"),
    ("   ", "empty"),
    # plain http to a public host
    ("http://platform-b.example/", "plain http:// is not allowed"),
    ("HTTP://PLATFORM-B.EXAMPLE/", "plain http:// is not allowed"),
]


def test_at_least_thirty_hostile_urls():
    assert len(HOSTILE) >= 30
    assert len({url for url, _ in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize(("url", "why"), HOSTILE, ids=[u or "<empty>" for u, _ in HOSTILE])
async def test_hostile_url_refused(url: str, why: str):
    dns = FakeDNS()
    with pytest.raises(OutboundRefused) as refused:
        await resolve_public(url, STRICT, resolver=dns)
    assert why in refused.value.reason, refused.value.reason
    assert len(dns.calls) <= 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://2130706433/",
        "https://[::1]:8443/",
        "http://localhost:8001/",
        "http://10.0.0.5/",
        "https://[::ffff:10.0.0.5]/",
        "http://127.0.0.1.nip.io/",
        "http://rebind.example/",
        "http://platform-b.example/",
        "http://redis:6379/",
        "https://[fe80::1%25eth0]/",
    ],
)
async def test_allow_private_lifts_private_refusals(url: str):
    target = await resolve_public(url, DEV, resolver=FakeDNS())
    assert ipaddress.ip_address(target.ip.split("%")[0])


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/",
        "http://metadata-alias.example/",
        "http://100.100.100.200/",
        "http://[64:ff9b::169.254.169.254]/",
        "http://[2002:a9fe:a9fe::1]/",
    ],
)
async def test_cloud_metadata_stays_refused_with_allow_private(url: str):
    with pytest.raises(OutboundRefused, match="metadata"):
        await resolve_public(url, DEV, resolver=FakeDNS())


@pytest.mark.parametrize(
    ("url", "host", "port", "ip", "base"),
    [
        ("https://platform-b.example", "platform-b.example", 443, PUBLIC_V4, "https://platform-b.example"),
        ("HTTPS://Platform-B.Example./baton/", "platform-b.example", 443, PUBLIC_V4, "https://platform-b.example/baton"),
        ("https://platform-b.example:8443/", "platform-b.example", 8443, PUBLIC_V4, "https://platform-b.example:8443"),
        ("  https://dual.example  ", "dual.example", 443, PUBLIC_V4, "https://dual.example"),
        ("https://v6only.example/", "v6only.example", 443, PUBLIC_V6, "https://v6only.example"),
        ("https://mapped-public.example/", "mapped-public.example", 443, PUBLIC_V4, "https://mapped-public.example"),
        ("https://93.184.215.14/", PUBLIC_V4, 443, PUBLIC_V4, "https://93.184.215.14"),
        ("https://1572394766/", PUBLIC_V4, 443, PUBLIC_V4, "https://93.184.215.14"),
        (f"https://[{PUBLIC_V6}]:444/", PUBLIC_V6, 444, PUBLIC_V6, f"https://[{PUBLIC_V6}]:444"),
        ("https://[::ffff:93.184.215.14]/", "::ffff:5db8:d70e", 443, PUBLIC_V4, "https://[::ffff:5db8:d70e]"),
        ("https://[64:ff9b::93.184.215.14]/", "64:ff9b::5db8:d70e", 443, "64:ff9b::5db8:d70e", None),
        ("https://[2002:5db8:d70e::1]/", "2002:5db8:d70e::1", 443, "2002:5db8:d70e::1", None),
        ("https://bücher.example/", "xn--bcher-kva.example", 443, PUBLIC_V4, "https://xn--bcher-kva.example"),
    ],
)
async def test_public_accepted(url: str, host: str, port: int, ip: str, base: str | None):
    dns = FakeDNS({"xn--bcher-kva.example": [PUBLIC_V4]})
    target = await resolve_public(url, STRICT, resolver=dns)
    assert (target.host, target.port, target.ip, target.url) == (host, port, ip, url.strip())
    if base is not None:
        assert target.base_url == base
    # IP literals are never looked up; names exactly once.
    assert dns.calls == ([] if _is_ip(host) else [host])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def test_address_problem_public_and_refused():
    assert address_problem(ipaddress.ip_address(PUBLIC_V4)) is None
    assert address_problem(ipaddress.ip_address(PUBLIC_V6)) is None
    assert address_problem(ipaddress.ip_address("10.0.0.5")) == "a private address"


async def test_resolution_happens_exactly_once():
    dns = FakeDNS()
    await resolve_public("https://platform-b.example/", STRICT, resolver=dns)
    assert dns.calls == ["platform-b.example"]


async def test_refused_names_and_http_are_not_looked_up():
    dns = FakeDNS()
    for url in ("https://localhost/", "https://metadata.google.internal/", "http://platform-b.example/"):
        with pytest.raises(OutboundRefused):
            await resolve_public(url, STRICT, resolver=dns)
    assert dns.calls == []


async def test_unresolvable_name_is_not_a_refusal():
    with pytest.raises(HostUnresolvable, match="does not resolve") as e:
        await resolve_public("https://dead.example/", STRICT, resolver=FakeDNS())
    assert e.value.retryable


async def test_empty_resolution():
    with pytest.raises(HostUnresolvable, match="no address"):
        await resolve_public("https://empty.example/", STRICT, resolver=FakeDNS({"empty.example": []}))


def test_policy_from_env():
    assert OutboundPolicy.from_env({}) == OutboundPolicy(False)
    assert OutboundPolicy.from_env({"BATON_ALLOW_PRIVATE_NETWORKS": "1"}) == OutboundPolicy(True)
    assert OutboundPolicy.from_env({"BATON_ALLOW_PRIVATE_NETWORKS": "0"}) == OutboundPolicy(False)
    with pytest.raises(ValueError):
        OutboundPolicy.from_env({"BATON_ALLOW_PRIVATE_NETWORKS": "maybe"})


# ---- pinned requests over real loopback HTTP ---------------------------------------------------------


async def test_pinned_request_reaches_checked_address_with_original_host():
    dns = FakeDNS()
    async with Receiver(verify_signatures=False) as receiver:
        url = f"http://platform-b.test:{receiver.port}/base"
        target = await resolve_public(url, DEV, resolver=dns)
        assert target.ip == "127.0.0.1"
        response = await post_json(target, "/hook", json.dumps({"hello": "b"}).encode(), {"x-test": "1"})
        assert response.status_code == 202
    assert dns.calls == ["platform-b.test"]  # the HTTP request itself resolved nothing
    [seen] = receiver.requests
    assert seen.path == "/base/hook"
    assert seen.headers["host"] == f"platform-b.test:{receiver.port}"
    assert seen.headers["x-test"] == "1"
    assert seen.json == {"hello": "b"}


async def test_pinned_client_connects_to_ip_even_if_name_now_resolves_elsewhere():
    # The name is never resolved again by the HTTP stack: it does not even exist in real DNS.
    async with Receiver(verify_signatures=False) as receiver:
        target = Target(url="x", scheme="http", host="never-resolves.invalid", port=receiver.port, ip="127.0.0.1")
        async with pinned_client(target) as client:
            response = await client.get("/hook")
        assert response.status_code == 202
        assert receiver.requests[0].headers["host"] == f"never-resolves.invalid:{receiver.port}"


async def test_redirect_is_not_followed():
    async with Receiver(verify_signatures=False) as receiver:
        target = await resolve_public(f"http://platform-b.test:{receiver.port}", DEV, resolver=FakeDNS())
        receiver.script((302, {"location": "http://169.254.169.254/latest/meta-data/"}))
        response = await post_json(target, "/hook", b"{}")
        assert response.status_code == 302
        assert response.headers["location"] == "http://169.254.169.254/latest/meta-data/"
        assert len(receiver.requests) == 1


async def test_pinned_transport_refuses_other_hosts_even_if_redirects_are_forced():
    async with Receiver(verify_signatures=False) as receiver:
        target = await resolve_public(f"http://platform-b.test:{receiver.port}", DEV, resolver=FakeDNS())
        receiver.script((307, {"location": f"http://other.test:{receiver.port}/hook"}))
        async with pinned_client(target) as client:
            with pytest.raises(OutboundRefused, match="is not for"):
                await client.post("/hook", content=b"{}", follow_redirects=True)
        assert len(receiver.requests) == 1


class Recorder(httpx.AsyncBaseTransport):
    """Stands in for the network: records what PinnedTransport would send, answers 202."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return httpx.Response(202)


async def test_https_request_carries_sni_of_original_name():
    recorder = Recorder()
    seen = recorder.seen

    target = await resolve_public("https://platform-b.example/v1", STRICT, resolver=FakeDNS())
    async with httpx.AsyncClient(transport=PinnedTransport(target, inner=recorder)) as client:
        response = await client.post(target.url_for("/agents/a/verify"), content=b"{}")
    assert response.status_code == 202
    [request] = seen
    assert request.url == httpx.URL(f"https://{PUBLIC_V4}/v1/agents/a/verify")
    assert request.headers["host"] == "platform-b.example"
    assert request.extensions["sni_hostname"] == "platform-b.example"


async def test_ipv6_target_is_dialled_in_brackets():
    recorder = Recorder()
    seen = recorder.seen

    target = await resolve_public("https://v6only.example:8443/", STRICT, resolver=FakeDNS())
    async with httpx.AsyncClient(transport=PinnedTransport(target, inner=recorder)) as client:
        await client.get(target.url_for("/x"))
    assert seen[0].url.netloc == f"[{PUBLIC_V6}]:8443".encode()
    assert seen[0].headers["host"] == "v6only.example:8443"


# ---- real TLS on loopback: the certificate is checked against the typed name, not the dialled IP ----------


def _self_signed(name: str, tmp_path) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
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
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


class TLSServer:
    """A minimal HTTPS server on 127.0.0.1 that records the SNI and Host it was sent and answers 202."""

    def __init__(self, cert: str, key: str) -> None:
        import ssl

        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.context.sni_callback = lambda sock, name, ctx: self.sni.append(name)
        self.sni: list[str | None] = []
        self.hosts: list[str] = []

    async def __aenter__(self) -> TLSServer:
        import asyncio

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("host:"):
                        self.hosts.append(line.split(":", 1)[1].strip())
                writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass  # a client that rejected our certificate hangs up mid-handshake
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_https_pinned_request_verifies_certificate_for_typed_name(tmp_path):
    import ssl

    cert, key = _self_signed("platform-b.test", tmp_path)
    trust = ssl.create_default_context(cafile=cert)
    async with TLSServer(cert, key) as server:
        target = await resolve_public(f"https://platform-b.test:{server.port}/", DEV, resolver=FakeDNS())
        response = await post_json(target, "/hook", b"{}", verify=trust)
    assert response.status_code == 202
    assert server.sni == ["platform-b.test"]
    assert server.hosts == [f"platform-b.test:{server.port}"]


async def test_https_pinned_request_rejects_certificate_for_another_name(tmp_path):
    import ssl

    cert, key = _self_signed("someone-else.test", tmp_path)
    trust = ssl.create_default_context(cafile=cert)
    async with TLSServer(cert, key) as server:
        target = await resolve_public(f"https://platform-b.test:{server.port}/", DEV, resolver=FakeDNS())
        with pytest.raises(httpx.ConnectError, match="(?i)hostname|certificate"):
            await post_json(target, "/hook", b"{}", verify=trust)


@pytest.mark.parametrize(
    ("url", "dialled"),
    [
        ("https://bücher.example/", f"https://{PUBLIC_V4}/x"),
        ("https://[::ffff:93.184.215.14]/", f"https://{PUBLIC_V4}/x"),
        ("https://1572394766/", f"https://{PUBLIC_V4}/x"),
        ("https://Platform-B.Example./", f"https://{PUBLIC_V4}/x"),
    ],
)
async def test_pinned_transport_accepts_target_in_normalised_forms(url: str, dialled: str):
    recorder = Recorder()
    seen = recorder.seen

    target = await resolve_public(url, STRICT, resolver=FakeDNS({"xn--bcher-kva.example": [PUBLIC_V4]}))
    async with httpx.AsyncClient(transport=PinnedTransport(target, inner=recorder)) as client:
        await client.get(target.url_for("/x"))
    assert str(seen[0].url) == dialled
    assert seen[0].headers["host"] == target.host_header


async def test_default_resolver_with_hosts_file_name():
    # localhost comes from the hosts file, never from public DNS; allowed only with allow_private.
    target = await resolve_public("http://localhost:8001/", DEV)
    assert ipaddress.ip_address(target.ip).is_loopback
