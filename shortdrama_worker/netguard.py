"""Outbound requests to addresses a client chose: inputs and webhooks.

A URL in a job is hostile until proven otherwise: it may point at the cloud
metadata service (169.254.169.254), at ComfyUI on loopback, or at a private
network. Every address is checked *after* resolution, by the resolver of the
session that then connects to exactly the checked address, so a DNS answer
cannot change between check and connect. IP literals skip resolvers in
aiohttp and are checked before the request. Redirects are followed by hand so
each hop is checked again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ThreadedResolver
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(OSError):
    """A host resolved only to addresses outside what may be fetched."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


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
        return None


def literal_ip(host: str) -> str | None:
    """``host`` if it is an IP literal (aiohttp does not resolve those)."""
    candidate = host.strip("[]")
    try:
        ipaddress.ip_address(candidate.split("%", 1)[0])
    except ValueError:
        return None
    return candidate


def literal_refusal(url: str, policy: AddressPolicy) -> str | None:
    """Why ``url``'s host may not be contacted, when the host is an IP literal.

    Host names are judged by ``GuardedResolver``; literals never reach it.
    """
    host = literal_ip(urlsplit(url).hostname or "")
    return policy.refusal(host) if host is not None else None


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
