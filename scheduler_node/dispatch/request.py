"""Pre-encoded HTTP/1.1 requests: everything a job sends is encoded once; a slot only fills in its headers.

Rules:
- A ``RequestTemplate`` is built once per job (and rebuilt when the job changes). It encodes the request
  line, ``Host``, ``User-Agent``, ``Content-Type``/``Content-Length``, the job's own headers, ``X-Shardwheel-Job``,
  ``X-Shardwheel-Node`` and the JSON body (msgspec, once). ``render`` joins those bytes with the slot headers:
  ``X-Shardwheel-Scheduled-At``, ``X-Shardwheel-Attempt``, ``Idempotency-Key`` and, with a signing secret,
  ``X-Shardwheel-Timestamp`` and ``X-Shardwheel-Signature``. It costs a few µs (one ``bytes.join``; the
  RFC 3339 string of a slot is cached, since a burst shares its second), which keeps the burst's critical path
  short (DESIGN.md §2: pre-encoded bytes + httptools, p99 drift 183 ms vs 469 ms through h11).
- The URL is read by ``protocol.targets.parse_target_url`` (origin, ``Host`` value, percent-encoded request
  target, IDNA), the same parse that validates ``target.url`` in the API, so any accepted URL builds.
- ``Content-Length`` is sent whenever a body exists, and as ``0`` for POST/PUT/PATCH without one, so no
  server waits for a body that never comes. No ``Connection`` header: HTTP/1.1 keeps alive by default.
- The job's headers come after ours; a job's ``Content-Type`` or ``User-Agent`` replaces ours (content
  negotiation is the job's business). Headers the scheduler owns (``Host``, ``Content-Length``,
  ``X-Shardwheel-*``, ``Idempotency-Key`` ...) and any line break in a value are refused with ``ValueError``:
  the API rejects them already, and a template must never let a stored row smuggle a second request.
- ``Idempotency-Key: <job id>:<slot unix ms>:<origin>`` is the same for every attempt of a slot, so a target
  that dedupes on it acts once per slot even under AT_LEAST_ONCE retries or a takeover's re-send.

Signature recipe (for targets; copied to the user docs)::

    X-Shardwheel-Timestamp: <send time, unix seconds>
    X-Shardwheel-Signature: v1=<hex(HMAC-SHA256(secret, f"{timestamp}.{job_id}.{scheduled_at}.{body}"))>

    - One ``v1=<hex>`` per secret the node holds, comma-separated, the current secret's first: while a secret
      is rotated, nodes sign with the new and the previous one (``--signing-secret``,
      ``--previous-signing-secret``), so a target accepts a request signed with either and can switch at its
      own pace without refusing a firing.

    - ``timestamp`` and ``scheduled_at`` are exactly the strings in the ``X-Shardwheel-Timestamp`` and
      ``X-Shardwheel-Scheduled-At`` headers, ``job_id`` the ``X-Shardwheel-Job`` header, ``body`` the exact
      body bytes received (empty when there is none), joined with ``.`` as bytes.
    - Reject when ``|now - timestamp| > 300`` s (replays), compare digests in constant time, then dedupe on
      ``Idempotency-Key``. ``verify_signature`` below is that recipe::

        def verify(secret: bytes, headers: dict[str, str], body: bytes, now_s: float) -> bool:
            h = {k.lower(): v for k, v in headers.items()}
            ts = h["x-shardwheel-timestamp"]
            if abs(now_s - int(ts)) > 300:
                return False
            msg = f"{ts}.{h['x-shardwheel-job']}.{h['x-shardwheel-scheduled-at']}.".encode() + body
            want = "v1=" + hmac.new(secret, msg, hashlib.sha256).hexdigest()
            given = [s.strip().lower() for s in h["x-shardwheel-signature"].split(",")]
            return any(hmac.compare_digest(want, s) for s in given)

Example::

    t = RequestTemplate.build("0190a1b2-...", Target(url="https://hooks.example.com/run", body={"n": 1}),
                              node_id="node-a", signing_secret=b"s3cret")
    t.http_origin                      # HttpOrigin(scheme='https', host='hooks.example.com', port=443)
    t.render(1795428000000, 1, "scheduled", 1795428000)
    # b'POST /run HTTP/1.1\\r\\nHost: hooks.example.com\\r\\nUser-Agent: shardwheel/0.1.0\\r\\n'
    # b'Content-Type: application/json\\r\\nContent-Length: 7\\r\\nX-Shardwheel-Job: 0190a1b2-...\\r\\n'
    # b'X-Shardwheel-Node: node-a\\r\\nX-Shardwheel-Scheduled-At: 2026-11-23T10:00:00.000Z\\r\\n'
    # b'X-Shardwheel-Attempt: 1\\r\\nIdempotency-Key: 0190a1b2-...:1795428000000:scheduled\\r\\n'
    # b'X-Shardwheel-Timestamp: 1795428000\\r\\nX-Shardwheel-Signature: v1=5d41...\\r\\n\\r\\n{"n":1}'
"""

from __future__ import annotations

import functools
import hmac
import importlib.metadata
import re
import time
from binascii import hexlify
from collections.abc import Mapping, Sequence

import msgspec

from protocol.executions import Origin
from protocol.jobs import HttpMethod, Job, Semantics, Target
from protocol.targets import HttpOrigin, parse_target_url

__all__ = [
    "USER_AGENT",
    "HttpOrigin",  # defined in protocol.targets; re-exported for the dispatcher's modules and callers
    "RequestTemplate",
    "format_scheduled_at",
    "sign",
    "verify_signature",
]

try:
    _VERSION = importlib.metadata.version("shardwheel")
except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
    _VERSION = "0"

USER_AGENT = f"shardwheel/{_VERSION}"

_BODY_METHODS = frozenset({HttpMethod.POST, HttpMethod.PUT, HttpMethod.PATCH})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Set by the scheduler; a job may not send its own (the API refuses them too: protocol/jobs.py).
_OWNED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "idempotency-key",
    }
)

_ATTEMPT_HDR = b"\r\nX-Shardwheel-Attempt: "
_IDEM_HDR = b"\r\nIdempotency-Key: "
_TS_HDR = b"\r\nX-Shardwheel-Timestamp: "
_SIG_HDR = b"\r\nX-Shardwheel-Signature: v1="
_SIG_SEP = b",v1="
_COLON = b":"
# Attempts are small (retry.max_attempts <= 20); encode them once.
_ATTEMPTS = tuple(b"%d" % i for i in range(64))
_ORIGINS: dict[str, bytes] = {o.value: o.value.encode() for o in Origin}


@functools.lru_cache(maxsize=1024)
def _slot_parts(scheduled_at_ms: int) -> tuple[bytes, bytes]:
    # A burst is thousands of requests for the same second: cache the formatted slot.
    return format_scheduled_at(scheduled_at_ms).encode(), b"%d" % scheduled_at_ms


def format_scheduled_at(scheduled_at_ms: int) -> str:
    """RFC 3339 UTC with milliseconds: ``1795428000000`` → ``2026-11-23T10:00:00.000Z``."""
    s, ms = divmod(scheduled_at_ms, 1000)
    t = time.gmtime(s)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{ms:03d}Z"


def _origin_bytes(origin: str) -> bytes:
    b = _ORIGINS.get(origin)
    if b is None:
        if not _TOKEN.fullmatch(origin):
            raise ValueError(f"origin {origin!r} is not a token")
        b = origin.encode()
    return b


def _secret_bytes(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else bytes(secret)


Secrets = bytes | str | Sequence[bytes | str] | None


def _secrets(given: Secrets) -> tuple[bytes, ...]:
    """One secret, several (the current first, then the previous), or none."""
    if given is None:
        return ()
    if isinstance(given, (bytes, str)):
        return (_secret_bytes(given),)
    return tuple(_secret_bytes(s) for s in given)


def sign(secret: bytes | str, timestamp: bytes, job_id: bytes, scheduled_at: bytes, body: bytes) -> bytes:
    """Hex HMAC-SHA256 of ``timestamp.job_id.scheduled_at.body`` (all exactly as sent), as ASCII bytes."""
    msg = b"".join((timestamp, b".", job_id, b".", scheduled_at, b".", body))
    return hexlify(hmac.digest(_secret_bytes(secret), msg, "sha256"))


def verify_signature(
    secret: bytes | str | Sequence[bytes | str],
    headers: Mapping[str, str],
    body: bytes,
    now_s: float,
    tolerance_s: float = 300,
) -> bool:
    """The target's side of the recipe in this module's docstring: origin and freshness in one check.

    ``secret``: the target's secret, or several while it rotates (any one matching any ``v1=`` signature
    passes). ``headers`` may use any case. False when a header is missing or malformed, the timestamp is
    further than ``tolerance_s`` from ``now_s`` (a replay), or no signature matches (compared in constant time).
    """
    h = {k.lower(): v for k, v in headers.items()}
    try:
        ts = h["x-shardwheel-timestamp"].strip()
        job_id = h["x-shardwheel-job"].strip()
        scheduled_at = h["x-shardwheel-scheduled-at"].strip()
        given = [s.strip().lower().encode("ascii", "replace") for s in h["x-shardwheel-signature"].split(",")]
        if abs(now_s - int(ts)) > tolerance_s:
            return False
        wants = [b"v1=" + sign(s, ts.encode(), job_id.encode(), scheduled_at.encode(), body)
                 for s in _secrets(secret)]  # fmt: skip
    except (KeyError, ValueError, UnicodeEncodeError):
        return False
    # Every pair compared, so the time taken says nothing about which one matched.
    return bool(sum(hmac.compare_digest(w, g) for w in wants for g in given))


def _header_line(name: str, value: str) -> bytes:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header name {name!r} is not a token")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"header {name}: value contains a line break or NUL")
    # Values are sent as UTF-8 (obs-text); names are ASCII by the check above.
    return f"{name}: {value}\r\n".encode()


# gc=False: a node holds one template per job inside its horizon (possibly 100k+); untracked, they cost
# nothing to every full collection (DESIGN.md §2 on GC and tail latency). They hold no reference cycles.
class RequestTemplate(msgspec.Struct, frozen=True, gc=False):
    """The pre-encoded request of one job for one node; ``render`` adds a slot's headers.

    Make one with ``RequestTemplate.build(job_id, target, node_id=...)`` or ``RequestTemplate.for_job(job,
    node_id=...)``; the fields are its encoded parts. Immutable; rebuild it when the job (target, semantics)
    or the signing secret changes.
    """

    job_id: str
    node_id: str
    url: str
    method: HttpMethod
    http_origin: HttpOrigin
    semantics: Semantics
    body: bytes | None
    head: bytes  # request line .. "X-Shardwheel-Scheduled-At: "
    idem: bytes  # "\r\nIdempotency-Key: <job id>:"
    end: bytes  # "\r\n\r\n" + body
    secrets: tuple[bytes, ...]  # the current signing secret first, then the previous one while rotating
    dot_job_dot: bytes  # ".<job id>." (signature message parts)
    dot_body: bytes  # ".<body>"

    @classmethod
    def build(
        cls,
        job_id: str,
        target: Target,
        *,
        node_id: str,
        signing_secret: Secrets = None,
        semantics: Semantics = Semantics.AT_LEAST_ONCE,
        user_agent: str = USER_AGENT,
    ) -> RequestTemplate:
        """Encode everything but the slot headers; ``ValueError`` for anything that could break framing.
        ``signing_secret``: one secret, or the current and the previous one while rotating."""
        for field, value in (("job_id", job_id), ("node_id", node_id)):
            if not value or any(c in value for c in "\r\n\0 :") or not value.isascii():
                raise ValueError(
                    f"{field} {value!r} must be non-empty ASCII without spaces, ':' or line breaks"
                )
        method = HttpMethod(target.method)
        try:
            http_origin, host_header, request_target = parse_target_url(target.url)
        except ValueError as e:
            raise ValueError(f"url {target.url!r}: {e}") from None
        body = None if target.body is None else msgspec.json.encode(target.body)
        own = {k.lower() for k in target.headers}
        for name in own:
            if name in _OWNED or name.startswith("x-shardwheel-"):
                raise ValueError(f"header {name} is set by the scheduler")

        lines = [
            f"{method.value} {request_target} HTTP/1.1\r\n".encode(),
            _header_line("Host", host_header),
        ]
        if "user-agent" not in own:
            lines.append(_header_line("User-Agent", user_agent))
        if body is not None:
            if "content-type" not in own:
                lines.append(b"Content-Type: application/json\r\n")
            lines.append(b"Content-Length: %d\r\n" % len(body))
        elif method in _BODY_METHODS:
            lines.append(b"Content-Length: 0\r\n")
        lines.extend(_header_line(k, v) for k, v in target.headers.items())
        job_b = job_id.encode()
        lines.append(b"X-Shardwheel-Job: " + job_b + b"\r\n")
        lines.append(b"X-Shardwheel-Node: " + node_id.encode() + b"\r\n")
        lines.append(b"X-Shardwheel-Scheduled-At: ")
        return cls(
            job_id=job_id,
            node_id=node_id,
            url=target.url,
            method=method,
            http_origin=http_origin,
            semantics=Semantics(semantics),
            body=body,
            head=b"".join(lines),
            idem=_IDEM_HDR + job_b + _COLON,
            end=b"\r\n\r\n" + (body or b""),
            secrets=_secrets(signing_secret),
            dot_job_dot=b"." + job_b + b".",
            dot_body=b"." + (body or b""),
        )

    @classmethod
    def for_job(
        cls,
        job: Job,
        *,
        node_id: str,
        signing_secret: Secrets = None,
        user_agent: str = USER_AGENT,
        target: Target | None = None,
    ) -> RequestTemplate:
        """``target``: the job's target as sent, if not the spec's own (its sealed headers opened)."""
        return cls.build(
            job.id,
            target or job.spec.target,
            node_id=node_id,
            signing_secret=signing_secret,
            semantics=job.spec.semantics,
            user_agent=user_agent,
        )

    @property
    def signed(self) -> bool:
        return bool(self.secrets)

    def render(self, scheduled_at_ms: int, attempt: int, origin: str, send_time_s: int) -> bytes:
        """The request bytes for one attempt of one slot; ``origin`` is the execution origin (``scheduled``...)."""
        sched, ms = _slot_parts(scheduled_at_ms)
        att = _ATTEMPTS[attempt] if 0 <= attempt < 64 else b"%d" % attempt
        org = _ORIGINS.get(origin) or _origin_bytes(origin)
        secrets = self.secrets
        if not secrets:
            return b"".join((self.head, sched, _ATTEMPT_HDR, att, self.idem, ms, _COLON, org, self.end))
        ts = b"%d" % send_time_s
        msg = b"".join((ts, self.dot_job_dot, sched, self.dot_body))
        sig = hexlify(hmac.digest(secrets[0], msg, "sha256"))
        for previous in secrets[1:]:
            sig += _SIG_SEP + hexlify(hmac.digest(previous, msg, "sha256"))
        return b"".join(
            (
                self.head,
                sched,
                _ATTEMPT_HDR,
                att,
                self.idem,
                ms,
                _COLON,
                org,
                _TS_HDR,
                ts,
                _SIG_HDR,
                sig,
                self.end,
            )
        )

    def __repr__(self) -> str:  # never the secret
        return f"RequestTemplate(job_id={self.job_id!r}, {self.method.value} {self.url!r})"
