"""Target URLs: what a job's ``target.url`` (or an ``alert_webhook``) means on the wire. Pure.

One parse for everyone: the API validates a URL with ``parse_target_url`` (``protocol.jobs``) and the node
builds the request from it (``scheduler_node.dispatch.request``), so a URL the API accepts is always one the
node can send to; before, a host such as ``é..com`` passed validation and then failed IDNA encoding in the
node.

Rules:
- Absolute ``http`` or ``https`` URLs only (the scheme is case-insensitive and comes out lower case).
- Host: lower case; a non-ASCII name is IDNA-encoded with Python's ``idna`` codec (IDNA 2003, what the node
  has always sent: ``bücher.example`` → ``xn--bcher-kva.example``), and a name it refuses (an empty label as
  in ``é..com``, a label over 63 characters) is an error. An IPv6 literal is bracketed in the URL and in the
  ``Host`` header, bare in ``HttpOrigin.host``.
- Port: the URL's, else the scheme's default (80, 443); ``Host`` names it only when it is not the default.
  Port 0 cannot be connected to and is refused; a port outside 0-65535 or not a number is an invalid URL.
- Request target: the path (``/`` when empty) and the query, percent-encoded where HTTP forbids the character
  (spaces, non-ASCII) and left alone elsewhere, so an existing ``%20`` is not encoded twice. The fragment is
  never sent. User info is ignored here (the API refuses it: ``protocol.jobs``).
- Errors are ``ValueError`` with a one-line message naming the problem but not the URL, so that a caller can
  prefix the field (``target.url: scheme must be http or https, got 'ftp'``).

Example::

    parse_target_url("https://Bücher.example:8443/a b?q=1#top")
    # TargetUrl(origin=HttpOrigin(scheme='https', host='xn--bcher-kva.example', port=8443),
    #           host_header='xn--bcher-kva.example:8443', request_target='/a%20b?q=1')
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple
from urllib.parse import quote, urlsplit

__all__ = ["HttpOrigin", "TargetUrl", "parse_target_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Path characters left as they are; anything else (spaces, non-ASCII) is percent-encoded.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_PATH_AS_IS = re.compile(r"[A-Za-z0-9/%:@!$&'()*+,;=._~-]+")  # what quote(safe=_PATH_SAFE) leaves unchanged
# The codec wraps its reason: "encoding with 'idna' codec failed (UnicodeError: label empty or too long)".
_CODEC_REASON = re.compile(r"\(UnicodeError: (.*)\)$")


class HttpOrigin(NamedTuple):
    """Where a request goes: one keep-alive pool and one in-flight cap per origin."""

    scheme: str  # "http" | "https"
    host: str  # lower case, IDNA-encoded, IPv6 without brackets
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class TargetUrl(NamedTuple):
    """A target URL as the node sends to it."""

    origin: HttpOrigin
    host_header: str  # the ``Host`` header value: host (bracketed if IPv6), ``:port`` unless the default
    request_target: str  # origin-form: percent-encoded path and query, never empty


@functools.lru_cache(maxsize=4096)  # jobs share targets: a batch of 1,000 often names one URL (errors are not cached)
def parse_target_url(url: str) -> TargetUrl:
    """Origin, ``Host`` value and request target of an absolute http(s) URL; ``ValueError`` if it has none."""
    try:
        parts = urlsplit(url)
        explicit_port = parts.port  # parsed lazily by urlsplit: a bad port raises only here
    except ValueError as e:
        raise ValueError(f"not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"scheme must be http or https, got '{scheme}'")
    if not parts.hostname:
        raise ValueError("URL has no host")
    if explicit_port == 0:
        raise ValueError("port 0 is not allowed")
    host = parts.hostname.lower()  # urlsplit strips IPv6 brackets
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as e:
            m = _CODEC_REASON.search(str(e))
            reason = m[1] if m else str(e)
            problem = f"host '{host}' is not a valid internationalised domain name ({reason})"
            raise ValueError(problem) from None
    default_port = _DEFAULT_PORTS[scheme]
    host_header = f"[{host}]" if ":" in host else host
    if explicit_port is not None and explicit_port != default_port:
        host_header = f"{host_header}:{explicit_port}"
    path = parts.path or "/"
    target = path if _PATH_AS_IS.fullmatch(path) else quote(path, safe=_PATH_SAFE)
    if parts.query:
        target = f"{target}?{quote(parts.query, safe=_QUERY_SAFE)}"
    port = default_port if explicit_port is None else explicit_port
    return TargetUrl(HttpOrigin(scheme, host, port), host_header, target)
