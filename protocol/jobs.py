"""The job model: what a user registers (``JobSpec``) and what is stored (``Job``).

Rules:
- Public input forbids unknown fields, so a typo (``"timout_ms"``) is an error, not a silently ignored key:
  ``decode_job_spec`` checks every key of the document against the fields it decoded into. The types
  themselves ignore unknown fields, so a stored row or an internal message written by a newer version (a
  field this one does not know) still decodes during a rolling upgrade.
- Every field has a default except ``name``, ``schedule`` and ``target``; new fields must get defaults
  (msgspec's schema-evolution rules), so nodes and API replicas of different versions interoperate.
- ``decode_job_spec`` is the one entry for untrusted bytes: structural errors from msgspec and semantic
  errors from ``validate_job_spec`` both come out as ``SpecError`` naming the field
  (``schedule.cron: minute field '61' out of range 0-59``). Rows read back from PostgreSQL skip the
  semantic pass (they were validated on the way in; re-parsing a million cron strings at start costs seconds).
- Accepted means runnable: ``validate_job_spec`` passes a spec only if every step a node takes with it
  succeeds — storing it (PostgreSQL's jsonb refuses a NUL character anywhere), compiling and iterating its
  schedule (instants within ``MIN_INSTANT``..``MAX_INSTANT``), encoding its request (``protocol.targets``;
  header values without control characters; a body nested at most ``Limits.body_depth`` deep). A hypothesis
  test holds it to that (``tests/protocol/test_runnable.py``).

Example::

    {"name": "nightly-report", "schedule": {"kind": "cron", "cron": "0 30 2 * * *"},
     "timezone": "Europe/London", "target": {"url": "https://reports.example.com/run"}}
"""

from __future__ import annotations

import enum
import re
import zoneinfo
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from .egress import STRICT, EgressPolicy
from .errors import SpecError
from .jitter import parse_jitter
from .schedules import Schedule, check_instant, validate_schedule
from .targets import parse_target_url

__all__ = [
    "Concurrency",
    "DstGap",
    "DstPolicy",
    "DstRepeat",
    "HttpMethod",
    "Job",
    "JobSpec",
    "JobState",
    "LIMITS",
    "Misfire",
    "MisfirePolicy",
    "RetryPolicy",
    "Semantics",
    "Success",
    "Target",
    "decode_job_spec",
    "decode_untrusted",
    "validate_job_spec",
    "SEALED_PREFIX",
]


class Limits(msgspec.Struct, frozen=True):
    name_chars: int = 200
    description_chars: int = 2_000
    tags: int = 32
    tag_chars: int = 64
    url_chars: int = 2_048
    headers: int = 32
    header_bytes: int = 8_192
    body_bytes: int = 65_536
    body_depth: int = 32
    max_attempts: int = 20
    max_timeout_ms: int = 300_000
    max_backoff_ms: int = 86_400_000


LIMITS = Limits()


class Semantics(enum.StrEnum):
    AT_LEAST_ONCE = "AT_LEAST_ONCE"
    AT_MOST_ONCE = "AT_MOST_ONCE"


class Concurrency(enum.StrEnum):
    ALLOW = "ALLOW"
    FORBID = "FORBID"  # skip a slot while the previous run is in flight (recorded skipped_overlap)
    BUFFER_ONE = "BUFFER_ONE"  # keep at most one slot waiting for the run in flight
    REPLACE = "REPLACE"  # cancel the run in flight (recorded cancelled) and start the new one


class MisfirePolicy(enum.StrEnum):
    FIRE_ONCE = "FIRE_ONCE"  # missed slots collapse into one late firing
    SKIP = "SKIP"  # missed slots are recorded skipped_misfire
    FIRE_ALL = "FIRE_ALL"  # every missed slot fires, up to Misfire.max_catchup


class JobState(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    AUTO_PAUSED = "auto_paused"  # paused after pause_after_failures consecutive failures
    COMPLETED = "completed"  # an `at` job after its slot, or a job past end_at
    BROKEN = "broken"  # stored, but no node can run it (another version's spec, a hand edit): state_reason
    DELETED = "deleted"  # what a delete answers; the id cannot be used again (409)


class DstGap(enum.StrEnum):
    SKIP = "skip"  # a wall time that does not exist that day does not fire
    SHIFT = "shift"  # it fires once at the first instant after the gap


class DstRepeat(enum.StrEnum):
    FIRST = "first"  # a wall time that occurs twice fires at its first occurrence
    SECOND = "second"
    BOTH = "both"


class HttpMethod(enum.StrEnum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class DstPolicy(msgspec.Struct, frozen=True):
    """Applies to cron schedules whose hour field is fixed; wildcard or stepped hours follow absolute time."""

    gap: DstGap = DstGap.SHIFT
    repeat: DstRepeat = DstRepeat.FIRST


class Target(msgspec.Struct, frozen=True):
    url: str
    method: HttpMethod = HttpMethod.POST
    # default_factory rather than {} / []: the same for msgspec, and OpenAPI generators can hash the default
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: Any = None  # any JSON value, sent as application/json; None sends no body


class Success(msgspec.Struct, frozen=True):
    status: list[Annotated[int, msgspec.Meta(ge=100, le=599)]] = msgspec.field(default_factory=list)  # []: 2xx
    body_contains: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


class RetryPolicy(msgspec.Struct, frozen=True):
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 3  # attempts in all, the first included
    initial_backoff_ms: Annotated[int, msgspec.Meta(ge=0)] = 1_000
    multiplier: Annotated[float, msgspec.Meta(ge=1.0, le=10.0)] = 2.0
    max_backoff_ms: Annotated[int, msgspec.Meta(ge=0)] = 60_000
    jitter: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.2  # +/- fraction of each backoff


class Misfire(msgspec.Struct, frozen=True):
    """What happens to slots missed while no node could fire them (outage, takeover, restart).

    A slot late by at most ``grace_ms`` still fires normally; older ones follow ``policy``.
    """

    policy: MisfirePolicy = MisfirePolicy.FIRE_ONCE
    grace_ms: Annotated[int, msgspec.Meta(ge=0, le=86_400_000)] = 60_000
    max_catchup: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100  # FIRE_ALL bound


class JobSpec(msgspec.Struct, frozen=True, omit_defaults=False):
    """What a user registers. Validated by ``decode_job_spec`` / ``validate_job_spec``."""

    name: str
    schedule: Schedule
    target: Target
    description: str = ""
    tags: list[str] = msgspec.field(default_factory=list)
    timezone: str = "UTC"
    dst: DstPolicy = DstPolicy()
    start_at: datetime | None = None
    end_at: datetime | None = None
    success: Success = msgspec.field(default_factory=Success)
    semantics: Semantics = Semantics.AT_LEAST_ONCE
    retry: RetryPolicy = RetryPolicy()
    timeout_ms: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    concurrency: Concurrency = Concurrency.ALLOW
    misfire: Misfire = Misfire()
    pause_after_failures: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    alert_webhook: str | None = None
    # Fire each scheduled slot this much later at most, at an offset fixed per job (protocol.jitter): a herd of
    # jobs on one schedule spreads over the window instead of one second.
    jitter: Annotated[str, msgspec.Meta(min_length=1, max_length=64, examples=["30s"])] | None = None


class Job(msgspec.Struct, frozen=True, omit_defaults=False):
    """A stored job as the API returns it. ``version`` is the optimistic-concurrency counter (the ETag)."""

    id: str
    tenant: str
    spec: JobSpec
    state: JobState
    version: int
    shard: int
    created_at: datetime
    updated_at: datetime
    next_fire_at: datetime | None = None
    state_reason: str | None = None  # why the node set the state (auto_paused, broken); a user's write clears


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"}
)
_WHITESPACE = re.compile(r"[ \r\n\t]")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/=-]*")
_CONTROL = re.compile(r"[\x00-\x1f]")
_CONTROL_BUT_WHITESPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _check_url(field: str, url: str, egress: EgressPolicy) -> None:
    if len(url) > LIMITS.url_chars:
        raise SpecError(field, f"longer than {LIMITS.url_chars} characters")
    try:
        # The node's own parse (scheme, host, IDNA, port): what passes here is a URL the node can send to.
        target = parse_target_url(url)
    except ValueError as e:
        raise SpecError(field, str(e)) from None
    if (refused := egress.refused_host(target.origin.host)) is not None:
        raise SpecError(field, f"target not allowed: {refused} (the cluster's egress policy)")
    # Stricter than the node, which ignores user info and percent-encodes or drops whitespace: refuse both, so
    # the stored URL reads as what is sent.
    if "@" in urlsplit(url).netloc:
        raise SpecError(field, "credentials in the URL are not allowed; use target.headers")
    if _WHITESPACE.search(url):
        raise SpecError(field, "URL contains whitespace")


SEALED_PREFIX = "swenc:"  # a header value encrypted at rest (protocol.sealed): "swenc:<key id>:<base64url>"
_SEAL_OVERHEAD = 12 + 16  # AES-GCM nonce and tag


def _plain_bytes(value: str) -> int:
    """A header value's size as the user gave it: a sealed one counts as its plaintext, so sealing never
    pushes an accepted spec over the limit."""
    if not value.startswith(SEALED_PREFIX):
        return len(value.encode())
    encoded = value.rpartition(":")[2]
    return max(0, len(encoded) * 3 // 4 - _SEAL_OVERHEAD)


def _check_headers(headers: dict[str, str]) -> None:
    if len(headers) > LIMITS.headers:
        raise SpecError("target.headers", f"at most {LIMITS.headers} headers, got {len(headers)}")
    size = 0
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise SpecError(f"target.headers.{name}", "not a valid HTTP header name")
        low = name.lower()
        if low in _RESERVED_HEADERS or low.startswith("x-shardwheel-") or low == "idempotency-key":
            raise SpecError(f"target.headers.{name}", "header is set by the scheduler and cannot be overridden")
        if any(c < " " and c != "\t" or c == "\x7f" for c in value):
            raise SpecError(f"target.headers.{name}", "value contains a control character")
        size += len(name.encode()) + _plain_bytes(value) + 4
    if size > LIMITS.header_bytes:
        raise SpecError("target.headers", f"headers total {size} bytes, more than {LIMITS.header_bytes}")


def validate_job_spec(spec: JobSpec, egress: EgressPolicy = STRICT) -> None:
    """Semantic validation of a structurally valid spec; raises ``SpecError`` naming the first bad field.

    ``egress``: the cluster's policy for target addresses (``protocol.egress``; by default nothing but public
    addresses)."""
    if _maybe_unstorable(spec) and (bad := _unstorable(msgspec.to_builtins(spec), "")) is not None:
        raise SpecError(*bad)
    if not spec.name.strip():
        raise SpecError("name", "must not be empty")
    if len(spec.name) > LIMITS.name_chars:
        raise SpecError("name", f"longer than {LIMITS.name_chars} characters")
    if _CONTROL.search(spec.name):
        raise SpecError("name", "contains control characters")
    if len(spec.description) > LIMITS.description_chars:
        raise SpecError("description", f"longer than {LIMITS.description_chars} characters")
    if _CONTROL_BUT_WHITESPACE.search(spec.description):
        raise SpecError("description", "contains control characters")
    if len(spec.tags) > LIMITS.tags:
        raise SpecError("tags", f"at most {LIMITS.tags} tags, got {len(spec.tags)}")
    for i, tag in enumerate(spec.tags):
        if len(tag) > LIMITS.tag_chars or not _TAG.fullmatch(tag):
            raise SpecError(f"tags[{i}]", f"'{tag[:80]}' is not a tag (letters, digits, _.:/=-; at most 64)")
    if len(set(spec.tags)) != len(spec.tags):
        raise SpecError("tags", "duplicate tag")
    validate_schedule(spec.schedule)
    try:
        zoneinfo.ZoneInfo(spec.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a tzdata folder, as 'America'
        raise SpecError("timezone", f"unknown IANA zone '{spec.timezone[:80]}'") from None
    for field in ("start_at", "end_at"):
        value = getattr(spec, field)
        if value is not None:
            check_instant(field, value)
    if spec.start_at is not None and spec.end_at is not None and spec.end_at <= spec.start_at:
        raise SpecError("end_at", "must be after start_at")
    _check_url("target.url", spec.target.url, egress)
    _check_headers(spec.target.headers)
    if spec.target.body is not None:
        if _depth(spec.target.body) > LIMITS.body_depth:
            raise SpecError("target.body", f"nested more than {LIMITS.body_depth} levels deep")
        size = len(msgspec.json.encode(spec.target.body))
        if size > LIMITS.body_bytes:
            raise SpecError("target.body", f"encodes to {size} bytes, more than {LIMITS.body_bytes}")
        if spec.target.method == HttpMethod.GET:
            raise SpecError("target.body", "a GET request cannot carry a body")
    if spec.jitter is not None:
        try:
            parse_jitter(spec.jitter)
        except ValueError as e:
            raise SpecError("jitter", str(e)) from None
    if spec.timeout_ms > LIMITS.max_timeout_ms:
        raise SpecError("timeout_ms", f"at most {LIMITS.max_timeout_ms} ms")
    r = spec.retry
    if r.max_attempts > LIMITS.max_attempts:
        raise SpecError("retry.max_attempts", f"at most {LIMITS.max_attempts}")
    if r.max_backoff_ms > LIMITS.max_backoff_ms:
        raise SpecError("retry.max_backoff_ms", f"at most {LIMITS.max_backoff_ms} ms")
    if r.initial_backoff_ms > r.max_backoff_ms:
        raise SpecError("retry.initial_backoff_ms", "larger than retry.max_backoff_ms")
    if spec.alert_webhook is not None:
        _check_url("alert_webhook", spec.alert_webhook, egress)


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0); iterative, so no depth can overflow the stack."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
        else:
            deepest = max(deepest, d)
            continue
        deepest = max(deepest, d + 1)
    return deepest


def _text_problem(text: str) -> str | None:
    if "\0" in text:
        return "contains a NUL character, which cannot be stored"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return None


def _maybe_unstorable(spec: JobSpec) -> bool:
    """False when one encoding shows the spec holds neither NUL nor a lone surrogate (nearly always): the walk
    that names the field is for the rest. (An escaped ``\\u0000`` typed as text is a false alarm: walked.)"""
    try:
        return b"\\u0000" in msgspec.json.encode(spec)
    except UnicodeEncodeError:
        return True


def _unstorable(value: Any, path: str) -> tuple[str, str] | None:
    """(path, problem) of the first string or object key PostgreSQL cannot store (NUL, a lone surrogate)."""
    if isinstance(value, str):
        problem = _text_problem(value)
        return None if problem is None else (path, problem)
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if (problem := _text_problem(str(k))) is not None:
                return sub.encode(errors="replace").decode(), problem
            if (found := _unstorable(v, sub)) is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if (found := _unstorable(v, f"{path}[{i}]")) is not None:
                return found
    return None


def _field_names(cls: type[msgspec.Struct]) -> dict[str, str]:
    """A struct's keys as the JSON spells them (its tag too) -> attribute names; cached per class."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = dict(zip(cls.__struct_encode_fields__, cls.__struct_fields__, strict=True))
        if isinstance(tag := cls.__struct_config__.tag_field, str):
            names[tag] = ""
        _FIELD_NAMES[cls] = names
    return names


_FIELD_NAMES: dict[type[msgspec.Struct], dict[str, str]] = {}


def _unknown_field(raw: Any, decoded: Any, path: str) -> str | None:
    """The first key of the document ``raw`` that decoding it into ``decoded`` did not use. Only structs are
    walked: a plain dict or ``Any`` in the types (target.headers, target.body) holds the user's own keys."""
    if isinstance(decoded, msgspec.Struct) and type(raw) is dict:
        names = _field_names(type(decoded))
        for k, v in raw.items():
            attr = names.get(k)
            if attr is None:
                return f"{path}.{k}" if path else k
            if attr and (type(v) is dict or type(v) is list):
                found = _unknown_field(v, getattr(decoded, attr), f"{path}.{k}" if path else k)
                if found is not None:
                    return found
    elif type(decoded) is list and type(raw) is list:
        for i, (r, d) in enumerate(zip(raw, decoded, strict=False)):
            if (found := _unknown_field(r, d, f"{path}[{i}]")) is not None:
                return found
    return None


_PATH_SUFFIX = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def spec_error_from_msgspec(err: msgspec.ValidationError | msgspec.DecodeError) -> SpecError:
    """Turn msgspec's ``Expected `str`, got `int` - at `$.schedule.cron``` into ``SpecError``."""
    m = _PATH_SUFFIX.match(str(err))
    assert m is not None  # the pattern matches any string
    path = (m["path"] or "").lstrip(".")
    msg = m["msg"]
    if isinstance(err, msgspec.ValidationError):
        # msgspec names unknown and missing fields in the message ("Object contains unknown field `foo`"): put
        # the field in the path
        named = re.fullmatch(r"Object (contains unknown|missing required) field `([^`]*)`", msg)
        if named:
            path = f"{path}.{named[2]}" if path else named[2]
            msg = "unknown field" if named[1] == "contains unknown" else "required"
    return SpecError(path, msg)


def decode_untrusted(data: bytes | str, type_: Any = Any) -> Any:
    """Untrusted JSON (a request body) decoded into ``type_``; every failure a ``SpecError`` naming the
    field."""
    try:
        return msgspec.json.decode(data, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise spec_error_from_msgspec(e) from None
    except RecursionError:
        raise SpecError("", "JSON nested too deeply") from None


def decode_job_spec(data: bytes | str, egress: EgressPolicy = STRICT) -> JobSpec:
    """Decode and validate untrusted JSON; every failure is a ``SpecError`` naming the field."""
    raw = decode_untrusted(data)
    try:
        spec = msgspec.convert(raw, JobSpec)
    except msgspec.ValidationError as e:
        raise spec_error_from_msgspec(e) from None
    if (unknown := _unknown_field(raw, spec, "")) is not None:
        raise SpecError(unknown, "unknown field")
    validate_job_spec(spec, egress)
    return spec
