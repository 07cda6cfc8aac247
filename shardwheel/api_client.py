"""The CLI's side of the control API: one HTTP client, its errors as one line, and a job spec from flags.

Rules:
- Settings: ``--api-url`` / ``SHARDWHEEL_URL`` (default ``http://127.0.0.1:8080``, what ``shardwheel dev`` runs)
  and ``--api-key`` / ``SHARDWHEEL_API_KEY``.
- An answer of 4xx/5xx is an ``ApiError`` whose text is the problem's field and message, or its detail, and
  the status: ``schedule.cron: 'x' is not a cron expression (HTTP 422)``. A 503 or 429 is retried a few times
  after its ``Retry-After`` (bounded), as the API asks; anything else is the caller's to show.
- A job is named by its id or by its name: a name is looked up (``q=``) and must match exactly one job.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from protocol.errors import ShardwheelError

__all__ = ["ApiClient", "ApiError", "DEFAULT_URL", "spec_from_flags"]

DEFAULT_URL = "http://127.0.0.1:8080"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RETRIES = 3  # 503 (no owner yet) and 429 (rate limit), each after its Retry-After, at most 5 s


class ApiError(ShardwheelError):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        errors = problem.get("errors") or []
        if errors and isinstance(errors[0], dict):
            first = errors[0]
            text = f"{first.get('field')}: {first.get('message')}" if first.get("field") else str(first.get("message"))
        else:
            text = str(problem.get("detail") or problem.get("title") or "no detail")
        super().__init__(f"{text} (HTTP {status})")
        self.status = status
        self.problem = problem


class ApiClient:
    def __init__(self, url: str, key: str | None, *, timeout: float = 60.0) -> None:
        if not key:
            raise ShardwheelError("no API key: pass --api-key or set SHARDWHEEL_API_KEY (shardwheel dev prints one)")
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout,
                                  headers={"authorization": f"Bearer {key}"})  # fmt: skip

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, content: bytes | None = None) -> httpx.Response:  # fmt: skip
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if json is not None:
            content = msgspec.json.encode(json)
            headers = {"content-type": "application/json", **(headers or {})}
        for attempt in range(_RETRIES + 1):
            try:
                answer = self._http.request(method, path, params=query, headers=headers, content=content)
            except httpx.TransportError as e:
                raise ShardwheelError(f"cannot reach the API at {self.url}: {e or type(e).__name__}") from None
            if answer.status_code in (429, 503) and attempt < _RETRIES:
                time.sleep(min(5.0, float(answer.headers.get("retry-after") or 1)))
                continue
            break
        if answer.status_code >= 400:
            try:
                problem = answer.json()
            except ValueError:
                problem = {"detail": answer.text[:200]}
            raise ApiError(answer.status_code, problem if isinstance(problem, dict) else {"detail": str(problem)})
        return answer

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()

    def job_id(self, ref: str) -> str:
        """The id of the job ``ref`` names: an id as it is, else the one job with that exact name."""
        if _UUID.fullmatch(ref):
            return ref
        found: list[dict[str, Any]] = []
        cursor = None
        while len(found) < 4:  # q matches part of a name: page on until the exact ones are known
            page = self.json("GET", "/v1/jobs", params={"q": ref, "limit": 1000, "cursor": cursor})
            found += [j for j in page["items"] if j["spec"]["name"] == ref]
            if (cursor := page.get("next_cursor")) is None:
                break
        if not found:
            raise ShardwheelError(f"no job is named '{ref}' (give its name or its id)")
        if len(found) > 1:
            ids = ", ".join(j["id"] for j in found[:3])
            raise ShardwheelError(f"{len(found)} jobs are named '{ref}': give an id ({ids}{', ...' if len(found) > 3 else ''})")
        return str(found[0]["id"])


def _body(value: str) -> Any:
    """``--body``: JSON text, ``@file`` (its JSON), or plain text sent as a JSON string."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def load_spec_file(path: str) -> dict[str, Any]:
    """A job spec from a JSON or YAML file (``-``: standard input)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ShardwheelError(f"{path}: neither JSON nor YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise ShardwheelError(f"{path}: a job spec is a JSON/YAML object")
    return value


def spec_from_flags(args: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job spec from ``jobs create`` flags over ``base`` (a file's spec): each given flag wins."""
    spec: dict[str, Any] = dict(base or {})
    schedules = [(k, v) for k, v in (("cron", args.cron), ("every", args.every), ("at", args.at)) if v]
    if len(schedules) > 1:
        raise ShardwheelError("give one schedule: --cron, --every or --at")
    if schedules:
        kind, value = schedules[0]
        spec["schedule"] = {"kind": kind, kind: value}
    for flag, field in (("name", "name"), ("tz", "timezone"), ("description", "description"),
                        ("semantics", "semantics"), ("jitter", "jitter")):  # fmt: skip
        if getattr(args, flag) is not None:
            spec[field] = getattr(args, flag)
    if args.tag:
        spec["tags"] = list(args.tag)
    target = dict(spec.get("target") or {})
    if args.url is not None:
        target["url"] = args.url
    if args.method is not None:
        target["method"] = args.method.upper()
    if args.header:
        headers = dict(target.get("headers") or {})
        for h in args.header:
            name, sep, value = h.partition(":")
            if not sep or not name.strip():
                raise ShardwheelError(f"--header: '{h}' is not 'Name: value'")
            headers[name.strip()] = value.strip()
        target["headers"] = headers
    if args.body is not None:
        target["body"] = _body(args.body)
    if target:
        spec["target"] = target
    for required, flag in (("name", "--name"), ("schedule", "--cron, --every or --at"), ("target", "--url")):
        if required not in spec:
            raise ShardwheelError(f"a job needs {required}: give {flag} (or a --file with it)")
    return spec
