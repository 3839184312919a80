"""Which proxy a request goes through, and how each HTTP stack is told (sources/proxy.py)."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcia_mirror.engine.workerhttp import Pool, Request
from tcia_mirror.errors import InputError
from tcia_mirror.sources.proxy import ProxyChoice, parse_proxy, via


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("text", "url", "auth"),
    [
        ("http://proxy.example:3128", "http://proxy.example:3128", None),
        ("proxy.example:3128", "http://proxy.example:3128", None),  # as curl and the env allow
        ("http://proxy.example", "http://proxy.example:80", None),
        ("HTTP://Proxy.Example:8080/", "http://proxy.example:8080", None),
        ("http://u%40x:p%3Aw@proxy:1", "http://proxy:1", basic("u@x", "p:w")),
        ("http://user@proxy:1", "http://proxy:1", basic("user", "")),
        ("http://[::1]:3128", "http://[::1]:3128", None),
    ],
)
def test_proxy_urls_are_read_liberally(text: str, url: str, auth: str | None) -> None:
    p = parse_proxy(text)
    assert (p.url, p.authorization) == (url, auth)
    assert "@" not in p.url and "@" not in repr(p)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("https://proxy:3128", "only http:// proxies"),
        ("socks5://proxy:1080", "only http:// proxies"),
        ("http://:3128", "names no host"),
        ("http://proxy:99999", "not a proxy URL"),
    ],
)
def test_other_proxies_are_one_line_errors(text: str, says: str) -> None:
    with pytest.raises(InputError, match=says) as caught:
        parse_proxy(text.replace("://", "://alice:s3cret@", 1))
    assert "s3cret" not in str(caught.value) and "\n" not in str(caught.value)


@given(st.text(min_size=0, max_size=30))
def test_any_password_reaches_the_header_and_nothing_else(text: str) -> None:
    """Percent-encoded in the URL, any password arrives whole in ``Proxy-Authorization``,
    and neither the proxy's repr nor its name for messages shows it."""
    pw = "Zq9" + text  # a marker no URL or repr contains by chance
    p = parse_proxy(f"http://alice:{quote(pw, safe='')}@proxy.example:3128")
    assert p.authorization == basic("alice", pw)
    assert "Zq9" not in repr(p) and "Zq9" not in p.url and p.password == pw


ENV = {
    "HTTPS_PROXY": "http://secure.proxy:3128",
    "http_proxy": "http://plain.proxy:8080",
    "NO_PROXY": "internal.example, .corp.example,10.1.2.3, storage.example:8443",
}


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("https://services.cancerimagingarchive.net/nbia-api/", "http://secure.proxy:3128"),
        ("http://archive.example/x", "http://plain.proxy:8080"),
        ("https://internal.example/x", None),
        ("https://a.internal.example/x", None),  # a domain covers its subdomains
        ("https://b.corp.example/x", None),
        ("https://corp.example/x", None),
        ("http://10.1.2.3:8080/x", None),
        ("https://storage.example:8443/x", None),  # host:port entries match that port only
        ("https://storage.example/x", "http://secure.proxy:3128"),
        ("https://notinternal.example/x", "http://secure.proxy:3128"),
        ("http://127.0.0.1:8000/x", None),  # loopback: never through the environment's proxy
        ("http://localhost:8000/x", None),
        ("http://[::1]:8000/x", None),
    ],
)
def test_the_environment_decides_per_url(url: str, want: str | None) -> None:
    chosen = ProxyChoice.from_settings(None, environ=ENV).for_url(url)
    assert (chosen.url if chosen else None) == want


def test_an_explicit_proxy_wins_goes_to_loopback_too_and_no_proxy_still_counts() -> None:
    choice = ProxyChoice.from_settings("http://mine:1", environ=ENV)
    for url in ("https://s3.amazonaws.com/b", "http://plain/x", "http://127.0.0.1:9/x"):
        chosen = choice.for_url(url)
        assert chosen is not None and chosen.url == "http://mine:1"
    assert choice.for_url("https://internal.example/x") is None
    assert (
        ProxyChoice.from_settings("http://mine:1", environ={"NO_PROXY": "*"}).for_url(
            "https://anything/x"
        )
        is None
    )


def test_no_proxy_settings_mean_direct_connections() -> None:
    choice = ProxyChoice.from_settings(None, environ={})
    assert not choice and choice.for_url("https://s3.amazonaws.com/x") is None


def test_an_environment_proxy_of_another_scheme_is_warned_about_and_not_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"HTTPS_PROXY": "socks5://alice:s3cret@x:1", "HTTP_PROXY": "http://plain:8080"}
    choice = ProxyChoice.from_settings(None, environ=env)
    assert choice.for_url("https://archive.example/x") is None  # direct, as before
    assert choice.for_url("http://archive.example/x") is not None
    assert "HTTPS_PROXY: only http:// proxies are supported" in caplog.text
    assert "s3cret" not in caplog.text
    with pytest.raises(InputError, match="--proxy: only http://"):  # given to us: an error
        ProxyChoice.from_settings("socks5://x:1", environ={})


def test_aiohttp_is_told_where_the_credentials_go() -> None:
    p = parse_proxy("http://alice:s3cret@proxy:3128")
    tunnelled = via(p, "https://archive.example/x", {"Authorization": "Bearer t"})
    assert tunnelled == {
        "headers": {"Authorization": "Bearer t"},
        "proxy": "http://proxy:3128",
        "proxy_headers": {"Proxy-Authorization": basic("alice", "s3cret")},
    }  # with the CONNECT only: never inside the tunnel
    plain = via(p, "http://archive.example/x", {"Authorization": "Bearer t"})
    assert plain == {
        "headers": {"Authorization": "Bearer t", "Proxy-Authorization": basic("alice", "s3cret")},
        "proxy": "http://proxy:3128",
    }
    assert via(None, "https://archive.example/x") == {"headers": {}}


def test_the_workers_tunnel_https_through_the_proxy_with_its_credentials() -> None:
    auth = basic("alice", "s3cret")
    req = Request("https://archive.example/x", {}, 5.0, 5.0, "http://proxy:3128", auth)
    conn = Pool()._new(("https", "archive.example", 443, "http://proxy:3128"), req)
    assert (conn.host, conn.port) == ("proxy", 3128)
    assert (conn._tunnel_host, conn._tunnel_port) == ("archive.example", 443)  # type: ignore[attr-defined]
    assert conn._tunnel_headers == {"Proxy-Authorization": auth}  # type: ignore[attr-defined]
    direct = Pool()._new(("https", "archive.example", 443, None), req)
    assert (direct.host, direct._tunnel_host) == ("archive.example", None)  # type: ignore[attr-defined]
