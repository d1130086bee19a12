"""Outbound requests to addresses a client chose: inputs and webhooks.

A URL in a job is hostile until proven otherwise: it may point at the cloud
metadata service (169.254.169.254), at ComfyUI on loopback, or at a private
network. Two rules keep it out:

* ``web_target`` normalises a URL with yarl, the parser aiohttp itself uses,
  so the host judged here is byte for byte the host aiohttp connects to
  (fullwidth digits, ideographic full stops and other IDNA mappings are
  already folded). Forms only some resolvers read as addresses (``127.1``,
  ``2130706433``, ``0x7f.0.0.1``, ``017700000001``) are refused outright,
  whatever the aiohttp version, as are credentials and zone ids.
* Every address is checked *after* resolution, by the resolver of the session
  that then connects to exactly the checked address, so a DNS answer cannot
  change between check and connect. IP literals skip resolvers in aiohttp, so
  the session also checks every request's URL before it is sent
  (``guarded_session``); redirects are followed by hand and each hop is
  judged again.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import aiohttp
import yarl
from aiohttp import ThreadedResolver
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# What a host name may contain once yarl has applied IDNA (lower-case ASCII).
# Underscores occur in real names (CDN shards); anything else, '%' included,
# is either not a host or a trick some resolver reads differently.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# WHATWG "ends in a number": such a host is an IPv4 address in some spelling.
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")


class AddressRefused(OSError):
    """A host resolved only to addresses outside what may be fetched."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


class UrlRefused(ValueError):
    """A URL that may never be fetched, whenever it is tried: refuse it once, for good.

    ``code`` is ``address_refused`` when the host is an address the policy
    refuses, ``invalid_url`` when the URL itself is unacceptable.
    """

    def __init__(self, reason: str, *, code: str = "invalid_url") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class AddressPolicy:
    """Public unicast addresses only, unless a network is allow-listed."""

    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allow_networks]

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be contacted, or ``None`` if it may."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allowed):
            return None
        for label, test in (
            ("loopback", ip.is_loopback),
            ("link-local", ip.is_link_local),
            ("private", ip.is_private),
            ("multicast", ip.is_multicast),
            ("unspecified", ip.is_unspecified),
            ("reserved", ip.is_reserved or not ip.is_global),
        ):
            if test:
                return f"{ip} is a {label} address"
        # 6to4 and Teredo carry an IPv4 address that a tunnel may deliver to.
        for embedded in _embedded_ipv4(ip):
            reason = self.refusal(str(embedded))
            if reason is not None:
                return f"{ip} embeds {embedded}: {reason}"
        return None

    def url_refusal(self, url: yarl.URL) -> str | None:
        """Why a normalised URL's host may not be contacted, when it is an IP literal.

        Host names are judged by ``GuardedResolver`` once resolved.
        """
        host = url.raw_host or ""
        return self.refusal(host) if _is_ip(host) else None


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [ip.sixtofour] if ip.sixtofour is not None else []
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def web_target(url: str | yarl.URL, *, allow_http: bool) -> yarl.URL:
    """``url`` normalised exactly as aiohttp will read it, or ``UrlRefused``.

    Fetch the returned ``yarl.URL`` itself, never the original string, so
    what was judged is what is connected to.
    """
    try:
        parsed = url if isinstance(url, yarl.URL) else yarl.URL(url)
        host = parsed.raw_host
        port = parsed.port
    except (ValueError, UnicodeError) as exc:
        # yarl applies IDNA to the host; a label IDNA cannot encode lands here.
        raise UrlRefused(f"not a valid URL ({_short(exc)})") from None
    if parsed.scheme not in ("https", "http"):
        raise UrlRefused(f"unsupported scheme {parsed.scheme or '(none)'!r}")
    if parsed.scheme == "http" and not allow_http:
        raise UrlRefused("http:// is not allowed here; use https://")
    if "@" in (parsed.raw_authority or ""):
        # Never sent as Basic auth, never echoed: say only that it was there.
        raise UrlRefused("credentials in URLs are not accepted (remove user:password@)")
    if not host:
        raise UrlRefused("URL has no host")
    problem = host_problem(host)
    if problem:
        raise UrlRefused(problem)
    if port is None or not 0 < port <= 65535:
        raise UrlRefused(f"port {port} is not a valid port")
    return parsed


def host_problem(host: str) -> str | None:
    """Why a host as yarl normalised it is not one we connect to, or ``None``."""
    if ":" in host:  # IPv6 (yarl drops the brackets)
        if "%" in host:
            return "IPv6 zone ids are not accepted"
        return None if _is_ip(host) else f"host {host!r} is not a valid IPv6 address"
    if _is_ip(host):
        return None  # canonical dotted quad
    name = host.removesuffix(".")  # a trailing dot is a fully qualified name
    labels = name.split(".")
    if labels and _NUMERIC_LABEL.match(labels[-1]):
        return (
            f"host {host!r} is not a canonical IPv4 address; "
            "write addresses as four decimal numbers (a.b.c.d)"
        )
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        return f"host {host!r} is not a valid host name"
    return None


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


class GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then drops refused addresses."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = []
        reasons = []
        for result in results:
            reason = self.policy.refusal(result["host"])
            if reason is None:
                allowed.append(result)
            else:
                reasons.append(reason)
        if not allowed:
            raise AddressRefused(host, "; ".join(sorted(set(reasons))) or "no address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(policy: AddressPolicy, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """A session for URLs clients chose: resolved addresses and literals both judged.

    The request hook is the last word for literals (which aiohttp connects to
    without a resolver): whatever code path sends a request through this
    session, a refused address is never contacted.
    """

    async def judge(session: Any, ctx: SimpleNamespace, params: Any) -> None:
        url: yarl.URL = params.url
        problem = host_problem(url.raw_host or "")
        if problem:
            raise AddressRefused(url.raw_host or "", problem)
        reason = policy.url_refusal(url)
        if reason:
            raise AddressRefused(url.raw_host or "", reason)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(judge)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=aiohttp.TCPConnector(resolver=GuardedResolver(policy)),
        trace_configs=[trace],
    )


def refusal_of(exc: BaseException) -> AddressRefused | None:
    """The ``AddressRefused`` behind an aiohttp connection error, if that is what it was."""
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AddressRefused):
            return current
        seen.add(id(current))
        current = getattr(current, "os_error", None) or current.__cause__
    return None
