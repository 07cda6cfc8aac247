"""protocol.targets: the one parse of a target URL (scheme, host with IDNA, IPv6, ports, request target)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from protocol.targets import HttpOrigin, TargetUrl, parse_target_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # scheme and host are case-insensitive and come out lower case; an empty path is "/"
        ("HTTPS://Example.COM", TargetUrl(HttpOrigin("https", "example.com", 443), "example.com", "/")),
        # IDNA (2003, Python's codec): non-ASCII labels become xn--, upper case folded first
        (
            "https://BÜCHER.example/",
            TargetUrl(HttpOrigin("https", "xn--bcher-kva.example", 443), "xn--bcher-kva.example", "/"),
        ),
        ("http://ß.de/", TargetUrl(HttpOrigin("http", "ss.de", 80), "ss.de", "/")),  # nameprep maps ß to ss
        # IPv6: bare in the origin, bracketed in Host; hex digits lower case
        ("http://[::1]:9000/x", TargetUrl(HttpOrigin("http", "::1", 9000), "[::1]:9000", "/x")),
        ("https://[2001:DB8::1]/", TargetUrl(HttpOrigin("https", "2001:db8::1", 443), "[2001:db8::1]", "/")),
        # ports: the default is implied and not named in Host; any other is named, even the other scheme's
        ("http://example.com:80/a", TargetUrl(HttpOrigin("http", "example.com", 80), "example.com", "/a")),
        ("https://example.com:443", TargetUrl(HttpOrigin("https", "example.com", 443), "example.com", "/")),
        (
            "https://example.com:8443/a",
            TargetUrl(HttpOrigin("https", "example.com", 8443), "example.com:8443", "/a"),
        ),
        (
            "http://example.com:443/",
            TargetUrl(HttpOrigin("http", "example.com", 443), "example.com:443", "/"),
        ),
        # request target: percent-encoded where needed, never twice; query kept; no fragment, no user info
        ("http://h/a b/ü%20?q=a b", TargetUrl(HttpOrigin("http", "h", 80), "h", "/a%20b/%C3%BC%20?q=a%20b")),
        ("http://h/p?x=1&y=/z?#frag", TargetUrl(HttpOrigin("http", "h", 80), "h", "/p?x=1&y=/z?")),
        ("https://u:pw@h:8443/", TargetUrl(HttpOrigin("https", "h", 8443), "h:8443", "/")),
    ],
)
def test_parses(url: str, expected: TargetUrl) -> None:
    assert parse_target_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/x", "scheme must be http or https, got 'ftp'"),
        ("mailto:ops@example.com", "scheme must be http or https, got 'mailto'"),
        ("javascript:alert(1)", "scheme must be http or https, got 'javascript'"),
        ("//example.com/x", "scheme must be http or https, got ''"),
        ("example.com", "scheme must be http or https, got ''"),
        ("https:///nohost", "URL has no host"),
        ("http://:8080/", "URL has no host"),
        ("http://example.com:0/", "port 0 is not allowed"),
        ("http://example.com:99999/", "not a valid URL (Port out of range 0-65535)"),
        ("http://example.com:http/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        # IDNA refusals: an empty label, a label over 63 characters, a non-ASCII label posing as punycode
        ("http://é..com/", "host 'é..com' is not a valid internationalised domain name (label empty or too"),
        ("http://" + "é" * 64 + ".com/", "label empty or too long"),
        ("http://xn--é.com/", "not a valid internationalised domain name"),
    ],
)
def test_refuses(url: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_target_url(url)
    assert problem in str(info.value)
    assert url not in str(info.value)  # the message names the problem; callers prefix the field or the URL


def test_origin_forms() -> None:
    assert str(HttpOrigin("http", "::1", 9000)) == "http://[::1]:9000"
    assert str(HttpOrigin("https", "example.com", 443)) == "https://example.com:443"
    assert HttpOrigin("https", "h", 443).tls and not HttpOrigin("http", "h", 80).tls


def test_exported() -> None:
    assert {"HttpOrigin", "TargetUrl", "parse_target_url"} <= set(protocol.__all__)
    assert protocol.HttpOrigin is HttpOrigin


_ascii_labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_unicode_labels = st.text(st.sampled_from("aébüßçøжλ中"), min_size=1, max_size=10)
_hosts = st.one_of(
    st.lists(_ascii_labels | _unicode_labels, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["[::1]", "[2001:db8::8a2e:370:7334]", "127.0.0.1", "[FE80::1]"]),
)
_paths = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="#?\\"), max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "Https"]),
    host=_hosts,
    port=st.none() | st.integers(1, 65_535),
    path=_paths,
    query=st.none() | _paths,
)
def test_what_it_sends_parses_back_to_itself(
    scheme: str, host: str, port: int | None, path: str, query: str | None
) -> None:
    """Whatever parses, the URL rebuilt from the parse (origin, Host, request target) parses to the same."""
    authority = host if port is None else f"{host}:{port}"
    url = f"{scheme}://{authority}/{path}" + ("" if query is None else f"?{query}")
    try:
        parsed = parse_target_url(url)
    except ValueError:
        return  # e.g. an IDNA refusal; the refusals are named above
    origin = parsed.origin
    assert origin.scheme == scheme.lower()
    assert origin.host.isascii() and origin.host == origin.host.lower()
    assert origin.port == (port if port is not None else {"http": 80, "https": 443}[origin.scheme])
    assert parsed.request_target.startswith("/") and parsed.request_target.isascii()
    assert " " not in parsed.request_target
    again = parse_target_url(f"{origin.scheme}://{parsed.host_header}{parsed.request_target}")
    assert again == parsed
