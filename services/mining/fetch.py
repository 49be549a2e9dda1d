"""HTTP fetching of untrusted URLs: SSRF-checked hops, manual redirects, size caps, politeness.

httpx is asked to connect to the IP address the guard validated (the Host header and TLS
SNI keep the real name), so a DNS answer that changes between check and connect cannot
redirect us to an internal address. Bodies are streamed and cut off at a cap.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from services.mining.netguard import Blocked, Guard, Target

REDIRECTS = {301, 302, 303, 307, 308}


class FetchError(Exception):
    """The resource could not be fetched; the message is the recorded reason."""


@dataclass
class Response:
    url: str                 # final URL after redirects
    status: int
    content_type: str        # media type only, lower-case
    body: bytes
    truncated: bool = False
    hops: list[str] = field(default_factory=list)


class Politeness:
    """Per-host concurrency limit plus a minimum delay between request starts to one host."""

    def __init__(self, concurrency: int, delay_s: float) -> None:
        self.concurrency = concurrency
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}
        self._next_start: dict[str, float] = defaultdict(float)

    def slot(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            if host not in self._sems:
                self._sems[host] = threading.BoundedSemaphore(self.concurrency)
            return self._sems[host]

    def wait_turn(self, host: str) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start[host])
            self._next_start[host] = start + self.delay_s
        if start > now:
            time.sleep(start - now)


def _pinned_url(url: str, target: Target) -> str:
    """The same URL with its host replaced by the validated address."""
    parts = urlsplit(url)
    host = f"[{target.address}]" if ":" in target.address else target.address
    return urlunsplit((parts.scheme, f"{host}:{target.port}", parts.path or "/", parts.query, ""))


class Fetcher:
    def __init__(self, guard: Guard, *, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 10.0, deadline_s: float = 30.0, max_redirects: int = 5,
                 per_host_concurrency: int = 2, per_host_delay_s: float = 0.0,
                 user_agent: str = "MagicLensMiner/0.1") -> None:
        self.guard = guard
        self.deadline_s = deadline_s
        self.max_redirects = max_redirects
        self.politeness = Politeness(per_host_concurrency, per_host_delay_s)
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s,
                                write=read_timeout_s, pool=deadline_s)
        # trust_env=False: no proxies or netrc from the environment; verify TLS certificates.
        self.client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False,
                                   headers={"User-Agent": user_agent},
                                   limits=httpx.Limits(max_connections=64,
                                                       max_keepalive_connections=16))

    def close(self) -> None:
        self.client.close()

    def get(self, url: str, *, max_bytes: int, accept: tuple[str, ...] = (),
            truncate: bool = False) -> Response:
        """GET with redirects followed by hand; raises Blocked or FetchError with a reason.

        `accept` lists allowed media-type prefixes (empty: any). Over `max_bytes` the body is
        cut and marked truncated when `truncate`, else the fetch fails.
        """
        hops: list[str] = []
        current = url
        started = time.monotonic()
        while True:
            target = self.guard.check(current)
            if current in hops:
                raise FetchError(f"redirect loop at {current}")
            hops.append(current)
            resp = self._one(current, target, max_bytes, accept, truncate, started)
            if isinstance(resp, Response):
                resp.hops = hops
                return resp
            location = resp
            if len(hops) > self.max_redirects:
                raise FetchError(f"too many redirects (> {self.max_redirects})")
            current = urljoin(current, location)

    def _one(self, url: str, target: Target, max_bytes: int, accept: tuple[str, ...],
             truncate: bool, started: float) -> Response | str:
        default_port = 443 if target.scheme == "https" else 80
        host_header = target.host if ":" not in target.host else f"[{target.host}]"
        if target.port != default_port:
            host_header += f":{target.port}"
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        sem = self.politeness.slot(target.hostport)
        with sem:
            self.politeness.wait_turn(target.hostport)
            try:
                request = self.client.build_request(
                    "GET", _pinned_url(url, target), headers={"Host": host_header},
                    extensions=extensions)
                r = self.client.send(request, stream=True)
                try:
                    if r.status_code in REDIRECTS:
                        location = r.headers.get("location")
                        if not location:
                            raise FetchError(f"HTTP {r.status_code} without Location")
                        return location
                    if r.status_code != 200:
                        raise FetchError(f"HTTP {r.status_code}")
                    ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
                    if accept and not ctype.startswith(accept):
                        raise FetchError(f"unexpected content-type '{ctype or 'none'}'")
                    declared = r.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes and not truncate:
                        raise FetchError(f"too large ({declared} bytes > {max_bytes})")
                    chunks, size, cut = [], 0, False
                    for chunk in r.iter_raw() if _identity(r) else r.iter_bytes():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > max_bytes:
                            if not truncate:
                                raise FetchError(f"too large (> {max_bytes} bytes)")
                            cut = True
                            break
                        if time.monotonic() - started > self.deadline_s:
                            raise FetchError(f"deadline of {self.deadline_s:.0f}s exceeded")
                    body = b"".join(chunks)[:max_bytes]
                    return Response(url, r.status_code, ctype, body, truncated=cut)
                finally:
                    r.close()
            except httpx.TimeoutException as exc:
                raise FetchError(f"timeout ({type(exc).__name__})") from None
            except httpx.HTTPError as exc:
                raise FetchError(f"network error ({type(exc).__name__}: {exc})"[:300]) from None


def _identity(r: httpx.Response) -> bool:
    return r.headers.get("content-encoding", "identity").lower() in ("", "identity")


__all__ = ["Blocked", "FetchError", "Fetcher", "Response"]
