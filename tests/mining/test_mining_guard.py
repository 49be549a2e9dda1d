"""SSRF: private, loopback, link-local, IPv6 and DNS names resolving to them are refused;
redirects are re-checked per hop; the validated address is the one connected to."""

from __future__ import annotations

import pytest

from services.mining import netguard
from services.mining.fetch import Fetcher, FetchError
from services.mining.netguard import Blocked, Guard


@pytest.mark.parametrize("url,why", [
    ("http://127.0.0.1/", "loopback"),
    ("http://127.8.9.10:8080/x", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("http://192.168.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://240.0.0.1/", "reserved"),
    ("http://100.64.0.1/", "non-global"),
    ("http://[::1]/", "loopback"),
    ("http://[fd00::1]/", "unique-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped loopback"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-mapped private"),
    ("http://[ff02::1]/", "multicast"),
])
def test_non_public_addresses_are_blocked(url, why):
    with pytest.raises(Blocked, match=why):
        Guard().check(url)


@pytest.mark.parametrize("url,why", [
    ("file:///etc/passwd", "scheme 'file'"), ("gopher://x/", "scheme 'gopher'"),
    ("http://user:pw@example.org/", "credentials"), ("http:///nohost", "no host"),
    ("http://[not-an-ip/", "malformed"),
])
def test_bad_urls_are_blocked(url, why):
    with pytest.raises(Blocked, match=why):
        Guard().check(url)


def test_dns_names_resolving_to_internal_addresses_are_blocked(monkeypatch):
    answers = {"intranet.example.com": ["10.0.0.7"], "sneaky.example.com": ["93.184.216.34",
                                                                            "127.0.0.1"],
               "v6.example.com": ["fd12::5"], "public.example.com": ["93.184.216.34"]}
    monkeypatch.setattr(netguard, "resolve_host", lambda host, port: answers[host])
    with pytest.raises(Blocked, match=r"private address 10\.0\.0\.7 \(intranet"):
        Guard().check("http://intranet.example.com/")
    with pytest.raises(Blocked, match="loopback"):  # one bad answer is enough
        Guard().check("https://sneaky.example.com/")
    with pytest.raises(Blocked, match="unique-local"):
        Guard().check("http://v6.example.com/")
    target = Guard().check("https://public.example.com/a")
    assert (target.address, target.port) == ("93.184.216.34", 443)


def test_localhost_resolves_through_the_real_resolver_and_is_blocked():
    with pytest.raises(Blocked, match="loopback"):
        Guard().check("http://localhost:8765/")


def test_allow_list_is_host_and_port_exact():
    guard = Guard({"127.0.0.1:8765"})
    assert guard.check("http://127.0.0.1:8765/x").address == "127.0.0.1"
    with pytest.raises(Blocked):
        guard.check("http://127.0.0.1:8766/x")
    with pytest.raises(Blocked):
        guard.check("http://localhost:8765/x")  # a name is not its address


def test_redirect_to_internal_address_is_refused_per_hop(web):
    web.add("/go-private", status=302, location="http://10.0.0.1/admin")
    web.add("/go-other-port", status=301, location="http://127.0.0.1:1/")
    web.add("/go-localhost", status=307, location=f"http://localhost:{web.port}/ok")
    web.add("/ok", "fine")
    fetcher = Fetcher(Guard({f"127.0.0.1:{web.port}"}))
    assert fetcher.get(web.base + "/ok", max_bytes=100).body == b"fine"
    for path, why in [("/go-private", "private"), ("/go-other-port", "loopback"),
                      ("/go-localhost", "loopback")]:
        with pytest.raises(Blocked, match=why):
            fetcher.get(web.base + path, max_bytes=100)
    fetcher.close()


def test_redirect_loops_and_chains_are_cut(web):
    web.add("/a", status=302, location="/b")
    web.add("/b", status=302, location="/a")
    for i in range(8):
        web.add(f"/c{i}", status=302, location=f"/c{i + 1}")
    web.add("/c8", "end")
    fetcher = Fetcher(Guard({f"127.0.0.1:{web.port}"}), max_redirects=5)
    with pytest.raises(FetchError, match="redirect loop"):
        fetcher.get(web.base + "/a", max_bytes=100)
    with pytest.raises(FetchError, match="too many redirects"):
        fetcher.get(web.base + "/c0", max_bytes=100)
    fetcher.close()


def test_connection_goes_to_the_validated_address_with_the_original_host(web, monkeypatch):
    """DNS rebinding: the name is resolved once; the socket goes to that checked address."""
    calls = []

    def resolve(host, port):
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["10.9.9.9"]  # a rebinding answer

    monkeypatch.setattr(netguard, "resolve_host", resolve)
    web.add("/pinned", "pinned")
    fetcher = Fetcher(Guard({f"images.example.test:{web.port}"}))
    resp = fetcher.get(f"http://images.example.test:{web.port}/pinned", max_bytes=100)
    assert resp.body == b"pinned" and len(calls) == 1
    assert web.requests[-1] == ("/pinned", f"images.example.test:{web.port}")
    fetcher.close()


def test_size_caps_and_content_type_checks(web):
    web.add("/big", b"x" * 5000, ctype="image/png")
    web.add("/page", "<html>" + "y" * 5000, ctype="text/html")
    fetcher = Fetcher(Guard({f"127.0.0.1:{web.port}"}))
    with pytest.raises(FetchError, match="too large"):
        fetcher.get(web.base + "/big", max_bytes=1000)
    with pytest.raises(FetchError, match="unexpected content-type 'text/html'"):
        fetcher.get(web.base + "/page", max_bytes=10_000, accept=("image/",))
    cut = fetcher.get(web.base + "/page", max_bytes=1000, truncate=True)
    assert cut.truncated and len(cut.body) == 1000
    fetcher.close()


def test_slow_server_times_out(web):
    web.add("/slow", "late", delay_s=2.0)
    fetcher = Fetcher(Guard({f"127.0.0.1:{web.port}"}), read_timeout_s=0.5)
    with pytest.raises(FetchError, match="timeout"):
        fetcher.get(web.base + "/slow", max_bytes=100)
    fetcher.close()
