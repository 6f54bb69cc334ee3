"""Outbound safety for operator-typed platform domains: refuse non-public addresses, resolve once, connect to the checked address."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import idna

ALLOW_PRIVATE_ENV = "BATON_ALLOW_PRIVATE_NETWORKS"
# Shorter than any activity timeout, so a hanging resolver ends as an error we can name.
RESOLVE_TIMEOUT = 5.0
REQUEST_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
DEFAULT_PORTS = {"http": 80, "https": 443}

# getaddrinfo's signature: resolver(host, port, *, type=...) -> [(family, type, proto, canonname, sockaddr), ...]
Resolver = Callable[..., Awaitable[list[tuple[Any, ...]]]]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundError(Exception):
    """Base of outbound failures; `reason` is operator-facing and never holds a secret."""

    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutboundRefused(OutboundError):
    """The URL is not allowed: a policy decision, final, never worth retrying."""


class HostUnresolvable(OutboundError):
    """The name did not resolve (a dead or mistyped domain, or DNS trouble); may heal, so retryable."""

    retryable = True


@dataclass(frozen=True)
class OutboundPolicy:
    """allow_private=True lets loopback, private and other non-public addresses through (development, tests)."""

    allow_private: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OutboundPolicy:
        raw = (os.environ if environ is None else environ).get(ALLOW_PRIVATE_ENV, "").strip().lower()
        if raw in ("", "0", "false", "no", "off"):
            return cls(allow_private=False)
        if raw in ("1", "true", "yes", "on"):
            return cls(allow_private=True)
        # A typo must not silently leave private networks open (or closed) in a way the operator did not intend.
        raise ValueError(f"{ALLOW_PRIVATE_ENV} must be 1 or 0")


@dataclass(frozen=True)
class Target:
    """A checked destination: requests go to `ip`, while Host, SNI and certificate checks use `host`."""

    url: str  # as the operator typed it, outer whitespace trimmed
    scheme: str
    host: str  # normalised: lower case, IDNA-encoded, no trailing dot, IPv6 without brackets
    port: int
    ip: str  # the checked address to connect to
    path: str = ""  # the URL's path without a trailing slash, so paths can be appended

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host_header}"

    @property
    def base_url(self) -> str:
        return self.origin + self.path

    def url_for(self, path: str) -> str:
        """The base URL plus `path` (which should start with '/')."""
        return self.base_url + (path if path.startswith("/") else "/" + path)


# ---- address classification ----------------------------------------------------------------------------

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Cloud metadata endpoints stay refused even with allow_private: no development setup needs them, and they hold credentials.
_METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
}
_METADATA_NAMES = {"metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal"}

# An explicit table rather than ipaddress's is_private/is_global: those flags changed between Python patch
# releases and miss some ranges (64:ff9b:1::/48 counts as global on 3.11.7).
_V4_REFUSED: list[tuple[ipaddress.IPv4Network, str]] = [
    (_V4("0.0.0.0/32"), "the unspecified address"),
    (_V4("0.0.0.0/8"), "a 'this network' address (0.0.0.0/8)"),
    (_V4("10.0.0.0/8"), "a private address"),
    (_V4("100.64.0.0/10"), "a carrier-grade NAT address (100.64.0.0/10)"),
    (_V4("127.0.0.0/8"), "a loopback address"),
    (_V4("169.254.0.0/16"), "a link-local address"),
    (_V4("172.16.0.0/12"), "a private address"),
    (_V4("192.0.0.0/24"), "an IETF protocol assignment address (192.0.0.0/24)"),
    (_V4("192.0.2.0/24"), "a documentation address"),
    (_V4("192.88.99.0/24"), "a 6to4 relay anycast address"),
    (_V4("192.168.0.0/16"), "a private address"),
    (_V4("198.18.0.0/15"), "a benchmarking address (198.18.0.0/15)"),
    (_V4("198.51.100.0/24"), "a documentation address"),
    (_V4("203.0.113.0/24"), "a documentation address"),
    (_V4("224.0.0.0/4"), "a multicast address"),
    (_V4("255.255.255.255/32"), "the broadcast address"),
    (_V4("240.0.0.0/4"), "a reserved address (240.0.0.0/4)"),
]
_V6_REFUSED: list[tuple[ipaddress.IPv6Network, str]] = [
    (_V6("::/128"), "the unspecified address"),
    (_V6("::1/128"), "a loopback address"),
    (_V6("64:ff9b:1::/48"), "a local-use NAT64 address (64:ff9b:1::/48)"),
    (_V6("100::/64"), "a discard-only address (100::/64)"),
    (_V6("2001::/32"), "a Teredo tunnel address (2001::/32), which can reach any IPv4 address"),
    (_V6("2001:db8::/32"), "a documentation address"),
    (_V6("3fff::/20"), "a documentation address"),
    (_V6("fc00::/7"), "a private (unique local) address"),
    (_V6("fe80::/10"), "a link-local address"),
    (_V6("fec0::/10"), "a site-local address"),
    (_V6("ff00::/8"), "a multicast address"),
]
_MAPPED = _V6("::ffff:0:0/96")
_COMPATIBLE = _V6("::/96")
_NAT64 = _V6("64:ff9b::/96")
_SIXTO4 = _V6("2002::/16")
_GLOBAL_UNICAST = _V6("2000::/3")


def _v4_problem(ip: ipaddress.IPv4Address) -> str | None:
    for network, what in _V4_REFUSED:
        if ip in network:
            return what
    if not ip.is_global:
        return "not a globally routable address"
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address (e.g. "a private address"), or None if it is public."""
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_problem(ip)
    ip = ipaddress.IPv6Address(ip.packed)  # drops a zone id, which does not change where the address points
    # Forms that embed an IPv4 address are judged by the address they reach.
    if ip in _MAPPED:
        embedded = ipaddress.IPv4Address(ip.packed[12:])
        inner = address_problem(embedded)
        return f"an IPv4-mapped address of {embedded}, {inner}" if inner else None
    if ip in _NAT64:
        embedded = ipaddress.IPv4Address(ip.packed[12:])
        inner = address_problem(embedded)
        return f"a NAT64 address of {embedded}, {inner}" if inner else None
    if ip in _SIXTO4:
        embedded = ipaddress.IPv4Address(ip.packed[2:6])
        inner = address_problem(embedded)
        return f"a 6to4 address of {embedded}, {inner}" if inner else None
    for network, what in _V6_REFUSED:
        if ip in network:
            return what
    if ip in _COMPATIBLE:
        # Deprecated (RFC 4291) and never routed; stacks that still honour it would reach the embedded IPv4.
        return f"an IPv4-compatible address of {ipaddress.IPv4Address(ip.packed[12:])}, which is deprecated"
    if ip not in _GLOBAL_UNICAST or not ip.is_global:
        return "not a globally routable address"
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip in _MAPPED or ip in _NAT64 or ip in _COMPATIBLE:
        return ipaddress.IPv4Address(ip.packed[12:])
    if ip in _SIXTO4:
        return ipaddress.IPv4Address(ip.packed[2:6])
    return None


def is_metadata(ip: IPAddress) -> bool:
    """A cloud metadata endpoint, in any form that reaches it; refused even when private networks are allowed."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(ip.packed)
        ip = _embedded_v4(ip) or ip
    return ip in _METADATA_ADDRESSES


def _refuses(ip: IPAddress, policy: OutboundPolicy) -> str | None:
    problem = address_problem(ip)
    if problem and (not policy.allow_private or is_metadata(ip)):
        return problem
    return None


def _connect_address(ip: IPAddress) -> IPAddress:
    """The address to dial: an IPv4-mapped IPv6 address is dialled as the IPv4 address it stands for."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is None and ip in _MAPPED:
        return ipaddress.IPv4Address(ip.packed[12:])
    return ip


# ---- URL parsing -----------------------------------------------------------------------------------------

_NUMBER_PART = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


def _parse_ipv4_number(part: str) -> int:
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)  # raises ValueError on 8 or 9, as clients refuse them
    return int(part)


def _parse_ipv4(host: str) -> ipaddress.IPv4Address:
    """The WHATWG / inet_aton reading of a numeric host: 2130706433, 0177.0.0.1, 0x7f.1, 127.1 are all 127.0.0.1."""
    parts = host.split(".")
    if len(parts) > 4 or any(not _NUMBER_PART.match(p) for p in parts):
        raise ValueError(host)
    numbers = [_parse_ipv4_number(p) for p in parts]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError(host)
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _ends_in_number(host: str) -> bool:
    # WHATWG's rule: a host whose last label is numeric is an IPv4 address or invalid, never a name.
    last = host.split(".")[-1]
    return bool(_NUMBER_PART.match(last))


def _split_netloc(netloc: str) -> tuple[str, str | None]:
    """(host, port text or None); brackets kept off an IPv6 host, which is returned with a leading '['."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise OutboundRefused("the URL has an unclosed '[' in its host")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise OutboundRefused("the URL has characters after its IPv6 address")
        return host, rest[1:] if rest else None
    if netloc.count(":") > 1:
        raise OutboundRefused("an IPv6 address in a URL must be in brackets, like http://[2001:db8::1]/")
    host, colon, port = netloc.partition(":")
    return host, port if colon else None


@dataclass(frozen=True)
class _Parsed:
    url: str
    scheme: str
    host: str
    port: int
    path: str
    literal: IPAddress | None


def _parse(url: str, policy: OutboundPolicy) -> _Parsed:
    if not isinstance(url, str) or not url.strip():
        raise OutboundRefused("the platform URL is empty")
    text = url.strip()
    # Whitespace, control characters and backslashes are read differently by different URL parsers.
    if _FORBIDDEN_CHARS.search(text):
        raise OutboundRefused("the platform URL contains whitespace, control characters or a backslash")
    try:
        parts = urlsplit(text)
    except ValueError as e:
        raise OutboundRefused(f"the platform URL cannot be parsed ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        shown = f"'{scheme}'" if scheme else "none"
        raise OutboundRefused(f"only http:// and https:// URLs are allowed (scheme: {shown})")
    netloc = parts.netloc
    if "@" in netloc:
        # user@host hides the real host from a reader (http://public.example@10.0.0.5/ goes to 10.0.0.5).
        raise OutboundRefused("credentials in the URL (user@host) are not allowed")
    raw_host, port_text = _split_netloc(netloc)
    if not raw_host or raw_host == "[]":
        raise OutboundRefused("the platform URL has no host")

    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise OutboundRefused(f"the port {port_text!r} is not a number between 1 and 65535")
        port = int(port_text)
    else:
        port = DEFAULT_PORTS[scheme]

    literal: IPAddress | None
    if raw_host.startswith("["):
        inner = raw_host[1:-1].replace("%25", "%")  # RFC 6874 writes a zone id as %25<zone>
        try:
            literal = ipaddress.IPv6Address(inner)
        except ValueError:
            raise OutboundRefused(f"{raw_host} is not a valid IPv6 address") from None
        if literal.scope_id is not None and not policy.allow_private:
            raise OutboundRefused(f"{raw_host} has an IPv6 zone id, which only makes sense for a local address")
        host = str(literal)
    else:
        if "%" in raw_host:
            # Percent-decoding in hosts differs between parsers (127.0.0.1%2e); no real domain needs it.
            raise OutboundRefused("the host contains a '%' escape")
        host = raw_host.lower()
        if not host.isascii():
            try:
                # UTS 46 mapping, as browsers and httpx do: fullwidth digits and '。' become ASCII here.
                host = idna.encode(host, uts46=True).decode("ascii")
            except idna.IDNAError as e:
                raise OutboundRefused(f"the host is not a valid international domain name ({e})") from None
        if host.endswith("."):
            host = host[:-1]  # an absolute name; the same host
        if not host:
            raise OutboundRefused("the platform URL has no host")
        if _ends_in_number(host):
            try:
                literal = _parse_ipv4(host)
            except ValueError:
                raise OutboundRefused(f"the host {raw_host!r} looks like an IP address but is not a valid one") from None
            host = str(literal)
        else:
            literal = None
            labels = host.split(".")
            if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
                raise OutboundRefused(f"the host {raw_host!r} is not a valid domain name")

    path = parts.path.rstrip("/")
    return _Parsed(text, scheme, host, port, path, literal)


def name_problem(host: str) -> str | None:
    """Why a (normalised) host name must not be used even before resolving it, or None."""
    if host in _METADATA_NAMES:
        return "a cloud metadata host name"
    if host == "localhost" or host.endswith(".localhost"):
        return "a loopback name"
    for suffix in ("internal", "local", "localdomain", "home.arpa", "lan", "intranet", "corp"):
        if host == suffix or host.endswith("." + suffix):
            return f"an internal name (.{suffix})"
    if "." not in host:
        # A single label is completed by the resolver's search domains, i.e. it names an internal host.
        return "a single-label name, which resolves through local search domains"
    return None


async def _default_resolver(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
    return await asyncio.get_running_loop().getaddrinfo(host, port, **kwargs)


async def resolve_public(url: str, policy: OutboundPolicy | None = None, resolver: Resolver | None = None) -> Target:
    """Check `url` and resolve its host once; every address must be public unless policy.allow_private.

    Raises OutboundRefused (final) for a URL that is not allowed and HostUnresolvable (retryable) for a
    name that does not resolve. Connect to the returned Target.ip only (see pinned_client).
    """
    policy = policy or OutboundPolicy()
    parsed = _parse(url, policy)
    host = parsed.host

    if parsed.literal is not None:
        problem = _refuses(parsed.literal, policy)
        if problem:
            raise OutboundRefused(f"{_shown(parsed)} is {problem}")
        chosen = _connect_address(parsed.literal)
    else:
        problem = name_problem(host)
        if problem and (not policy.allow_private or host in _METADATA_NAMES):
            raise OutboundRefused(f"{host} is {problem}")
        # Checked before resolving, so a doomed URL causes no lookup at all.
        _check_scheme(parsed, policy)
        addresses = await _resolve(host, parsed.port, resolver or _default_resolver)
        for address in addresses:
            problem = _refuses(address, policy)
            if problem:
                # One bad address is enough: a client would be free to use any of them.
                raise OutboundRefused(f"{host} resolves to {address}, {problem}")
        chosen = _connect_address(addresses[0])

    _check_scheme(parsed, policy)
    return Target(url=parsed.url, scheme=parsed.scheme, host=host, port=parsed.port, ip=str(chosen), path=parsed.path)


def _shown(parsed: _Parsed) -> str:
    return str(parsed.literal) if parsed.literal is not None else parsed.host


def _check_scheme(parsed: _Parsed, policy: OutboundPolicy) -> None:
    # Plain http would send signed envelopes and customer context readable and alterable on the way.
    if parsed.scheme == "http" and not policy.allow_private:
        raise OutboundRefused(
            f"plain http:// is not allowed for a public platform; use https://{parsed.host}"
            f" ({ALLOW_PRIVATE_ENV}=1 allows it for development)"
        )


async def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        infos = await asyncio.wait_for(resolver(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    except TimeoutError:
        raise HostUnresolvable(f"{host} did not resolve within {RESOLVE_TIMEOUT:g} s") from None
    except (socket.gaierror, OSError) as e:
        raise HostUnresolvable(f"{host} does not resolve ({e.strerror or e})") from None
    addresses: list[IPAddress] = []
    for info in infos:
        sockaddr = info[4]
        try:
            address = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            raise OutboundRefused(f"{host} resolves to {sockaddr[0]!r}, which is not an IP address") from None
        if isinstance(address, ipaddress.IPv6Address) and len(sockaddr) >= 4 and sockaddr[3]:
            address = ipaddress.IPv6Address(f"{address}%{sockaddr[3]}")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise HostUnresolvable(f"{host} resolves to no address")
    return addresses


# ---- pinned HTTP -----------------------------------------------------------------------------------------


class PinnedTransport(httpx.AsyncBaseTransport):
    """Sends every request to the target's checked IP, with the original Host header and TLS server name.

    A request for any other scheme, host or port (a redirect followed by a careless caller, say) is refused
    rather than resolved again.
    """

    def __init__(
        self,
        target: Target,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.target = target
        # retries=0: a connect retry must not become a second attempt the caller does not see.
        self._inner = inner or httpx.AsyncHTTPTransport(retries=0, verify=verify)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t = self.target
        url = request.url
        host = url.raw_host.decode("ascii").lower().rstrip(".")  # IDNA form, as target.host
        if url.scheme != t.scheme or host != t.host or (url.port or DEFAULT_PORTS[url.scheme]) != t.port:
            raise OutboundRefused(f"a request to {url.scheme}://{url.netloc.decode('ascii')} is not for {t.origin}")
        extensions = dict(request.extensions)
        if t.scheme == "https" and ":" not in t.host and not _is_ipv4(t.host):
            # The certificate is checked against the name the operator typed, not the address we dial.
            extensions["sni_hostname"] = t.host
        headers = request.headers.copy()
        headers["Host"] = t.host_header
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=t.ip),
            headers=headers,
            stream=request.stream,
            extensions=extensions,
        )
        return await self._inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def pinned_client(
    target: Target,
    *,
    timeout: httpx.Timeout | float = REQUEST_TIMEOUT,
    verify: ssl.SSLContext | bool = True,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An AsyncClient bound to `target`: no redirects, no proxies or .netrc from the environment.

    `verify` is for the TLS layer (an SSLContext trusting a test CA, say); certificates are checked
    against target.host either way.
    """
    return httpx.AsyncClient(
        transport=PinnedTransport(target, verify=verify),
        base_url=target.base_url,
        follow_redirects=False,
        # The environment's proxies would dial the name again, and .netrc could attach credentials.
        trust_env=False,
        timeout=timeout,
        **kwargs,
    )


async def post_json(
    target: Target,
    path: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    timeout: httpx.Timeout | float = REQUEST_TIMEOUT,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Response:
    """POST already-serialised JSON (bytes, as signed) to target + path; a 3xx comes back as-is, unfollowed."""
    async with pinned_client(target, timeout=timeout, verify=verify) as client:
        response = await client.post(
            target.url_for(path),
            content=body,
            headers={"content-type": "application/json", **(headers or {})},
        )
        await response.aread()
        return response
