"""SSRF guard: which URLs the miner may contact, and the exact address to connect to.

A URL is allowed when its scheme is http(s) and *every* address its host resolves to is a
public unicast address — or when its `host[:port]` is on the configured allow-list. The
caller then connects to the address validated here (not a second DNS answer), which closes
the DNS-rebinding gap; every redirect hop is checked again.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Blocked(ValueError):
    """The URL must not be fetched; the message is the recorded reason."""


class Unresolved(Blocked):
    """The host did not resolve. Unlike the other refusals this may pass (a resolver outage,
    a domain not yet propagated): a page is retried with back-off, not skipped for good."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str          # as written in the URL (lower-case, no brackets)
    port: int
    address: str       # the validated IP to connect to

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"


def resolve_host(host: str, port: int) -> list[str]:
    """All addresses `host` resolves to (tests monkeypatch this one function)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def address_problem(ip: IPAddress) -> str | None:
    """Why an address is not a public unicast destination, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            inner = address_problem(mapped)
            return f"IPv4-mapped {inner}" if inner else None
        if ip in ipaddress.ip_network("fc00::/7"):
            return "unique-local IPv6 address"
    checks = (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
              ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
              ("reserved", ip.is_reserved), ("private", ip.is_private),
              ("non-global", not ip.is_global))
    for name, bad in checks:
        if bad:
            return f"{name} address"
    return None


class Guard:
    def __init__(self, allow_hosts: set[str] | None = None, allow_private: bool = False) -> None:
        self.allow_hosts = {h.lower() for h in (allow_hosts or set())}
        self.allow_private = allow_private

    def _allowed(self, host: str, port: int) -> bool:
        return (self.allow_private or host in self.allow_hosts
                or f"{host}:{port}" in self.allow_hosts
                or f"[{host}]:{port}" in self.allow_hosts)

    def check(self, url: str) -> Target:
        """Validate `url` and pick the address to connect to; raises Blocked with a reason."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise Blocked(f"malformed URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise Blocked(f"scheme '{scheme}' not allowed")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise Blocked("URL has no host")
        if parts.username or parts.password:
            raise Blocked("credentials in URL")
        port = port or (443 if scheme == "https" else 80)
        allowed = self._allowed(host, port)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = resolve_host(host, port)
            except (OSError, UnicodeError) as exc:
                raise Unresolved(f"cannot resolve {host} ({type(exc).__name__})") from None
            if not addresses:
                raise Blocked(f"{host} resolves to nothing")
        for addr in addresses:
            ip = ipaddress.ip_address(addr.split("%")[0])
            problem = address_problem(ip)
            if problem and not allowed:
                via = "" if literal is not None else f" ({host} resolves to {addr})"
                raise Blocked(f"blocked {problem} {addr}{via}")
        return Target(scheme, host, port, addresses[0])
