"""``shardwheel jobs|runs|alerts|stats|keys|cluster``: the control API from the command line.

Every command reads ``--api-url``/``SHARDWHEEL_URL`` and ``--api-key``/``SHARDWHEEL_API_KEY``, prints tables for
people and the API's JSON with ``--json``, and turns an API error into one line with exit code 1
(``shardwheel: error: schedule.cron: ... (HTTP 422)``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from protocol.errors import ShardwheelError

from .api_client import DEFAULT_URL, ApiClient, ApiError, load_spec_file, spec_from_flags
from .tables import (
    console,
    format_time,
    print_cluster,
    print_executions,
    print_job,
    print_jobs,
    schedule_text,
    show,
    table,
)

__all__ = ["add_client_commands", "client_settings", "example"]

_BATCH = 1000  # POST /v1/jobs:batch takes at most this many
_IMPORTS_IN_FLIGHT = 3  # batches sent at once: the API's and the nodes' work overlap


_P = TypeVar("_P", bound=argparse.ArgumentParser)


def client_settings(parser_class: type[_P]) -> _P:
    p = parser_class(add_help=False)
    p.add_argument("--api-url", default=os.environ.get("SHARDWHEEL_URL", DEFAULT_URL),
                   help=f"the control API (env SHARDWHEEL_URL; default {DEFAULT_URL})")
    p.add_argument("--api-key", default=os.environ.get("SHARDWHEEL_API_KEY"),
                   help="an API key (env SHARDWHEEL_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    return p


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(args.api_url, args.api_key)


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


# ---- jobs ----------------------------------------------------------------------------------------------------


def jobs_create(args: argparse.Namespace) -> int:
    spec = spec_from_flags(args, load_spec_file(args.file) if args.file else None)
    headers = {"idempotency-key": args.idempotency_key} if args.idempotency_key else None
    with _client(args) as api:
        job = api.json("POST", "/v1/jobs", json=spec, headers=headers)
    if args.json:
        _print_json(job)
    else:
        console.print(f"created job {job['id']} ({job['spec']['name']}): "
                      f"{schedule_text(job['spec']['schedule'], job['spec'].get('timezone', 'UTC'))}, "
                      f"next firing {format_time(job.get('next_fire_at'), ms=True)} UTC")  # fmt: skip
    return 0


def _pages(api: ApiClient, params: dict[str, Any], limit: int) -> Iterator[dict[str, Any]]:
    """Jobs through the cursor, ``limit`` at most (0: all)."""
    cursor, seen = None, 0
    while True:
        page_size = _BATCH if limit == 0 else min(_BATCH, limit - seen)
        page = api.json("GET", "/v1/jobs", params={**params, "cursor": cursor, "limit": page_size})
        for job in page["items"]:
            yield job
            seen += 1
        cursor = page.get("next_cursor")
        if cursor is None or (limit and seen >= limit):
            return


def jobs_list(args: argparse.Namespace) -> int:
    params = {"tag": args.tag, "state": args.state, "q": args.q}
    with _client(args) as api:
        jobs = list(_pages(api, params, args.limit))
    if args.json:
        _print_json(jobs)
    else:
        print_jobs(jobs)
        console.print(f"{len(jobs)} job(s)" + (" (--limit reached; --limit 0 shows all)"
                                               if args.limit and len(jobs) >= args.limit else ""))  # fmt: skip
    return 0


def jobs_get(args: argparse.Namespace) -> int:
    with _client(args) as api:
        job = api.json("GET", f"/v1/jobs/{api.job_id(args.job)}")
    _print_json(job) if args.json else print_job(job)
    return 0


def jobs_edit(args: argparse.Namespace) -> int:
    """The spec in ``$EDITOR``; the edited spec is sent with ``If-Match``, so a change made meanwhile is not
    overwritten (412: edit again)."""
    with _client(args) as api:
        job_id = api.job_id(args.job)
        answer = api.call("GET", f"/v1/jobs/{job_id}")
        job, etag = answer.json(), answer.headers.get("etag", "")
        before = msgspec.json.format(msgspec.json.encode(job["spec"]), indent=2)
        with tempfile.NamedTemporaryFile("wb", suffix=".json", prefix="shardwheel-job-", delete=False) as f:
            f.write(before + b"\n")
        try:
            editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
            if subprocess.call([*editor.split(), f.name]) != 0:
                raise ShardwheelError(f"the editor ({editor}) failed; nothing was changed")
            after = Path(f.name).read_bytes()
        finally:
            os.unlink(f.name)
        try:
            edited = msgspec.json.decode(after)
        except msgspec.DecodeError as e:
            raise ShardwheelError(f"the edited spec is not JSON ({e}); nothing was changed") from None
        if edited == job["spec"]:
            console.print("no change")
            return 0
        try:
            written = api.json("PUT", f"/v1/jobs/{job_id}", json=edited, headers={"if-match": etag})
        except ApiError as e:
            if e.status == 412:
                raise ShardwheelError("the job changed while you edited it; nothing was written: edit again") from None
            raise
    _print_json(written) if args.json else console.print(f"job {job_id} is now version {written['version']}")
    return 0


def _job_action(op: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        with _client(args) as api:
            job_id = api.job_id(args.job)
            if op == "delete":
                answer = api.json("DELETE", f"/v1/jobs/{job_id}")
            else:
                headers = {"idempotency-key": args.idempotency_key} if getattr(args, "idempotency_key", None) else None
                answer = api.json("POST", f"/v1/jobs/{job_id}/{op}", headers=headers)
        if args.json:
            _print_json(answer)
        elif op == "trigger":
            console.print(f"job {job_id}: one firing now (origin manual)")
        else:
            console.print(f"job {job_id}: {answer.get('state', op)}")
        return 0

    return run


def jobs_runs(args: argparse.Namespace) -> int:
    with _client(args) as api:
        job_id = api.job_id(args.job)
        page = api.json("GET", f"/v1/jobs/{job_id}/executions",
                        params={"limit": args.limit, "status": args.status})  # fmt: skip
    if args.json:
        _print_json(page["items"])
    else:
        print_executions(page["items"])
        if not page["items"]:
            console.print("no executions yet")
    return 0


def jobs_preview(args: argparse.Namespace) -> int:
    with _client(args) as api:
        if args.job:
            if args.cron or args.every or args.at:
                raise ShardwheelError("give a job or a schedule (--cron/--every/--at), not both")
            answer = api.json("GET", f"/v1/jobs/{api.job_id(args.job)}/preview", params={"n": args.n})
        else:
            kinds = [(k, v) for k, v in (("cron", args.cron), ("every", args.every), ("at", args.at)) if v]
            if len(kinds) != 1:
                raise ShardwheelError("give a job, or exactly one of --cron, --every, --at")
            kind, value = kinds[0]
            answer = api.json("POST", "/v1/schedules/preview",
                              json={"schedule": {"kind": kind, kind: value}, "timezone": args.tz, "n": args.n})  # fmt: skip
    if args.json:
        _print_json(answer)
        return 0
    for i in answer["instants"]:
        note = f"  ({'in a DST gap' if i['dst'] == 'gap' else 'in a DST repeat'})" if i.get("dst") else ""
        console.print(f"{i['utc']:<26} {i['local']}{note}")
    return 0


def jobs_backfill(args: argparse.Namespace) -> int:
    headers = {"idempotency-key": args.idempotency_key} if args.idempotency_key else None
    with _client(args) as api:
        job_id = api.job_id(args.job)
        answer = api.json("POST", f"/v1/jobs/{job_id}/backfill", json={"from": args.from_, "to": args.to},
                          headers=headers)  # fmt: skip
    if args.json:
        _print_json(answer)
    else:
        console.print(f"job {job_id}: {len(answer.get('slots') or [])} slot(s) fire now (origin backfill)")
    return 0


def _read_specs(path: str) -> list[Any]:
    """JSON lines, or one JSON array, of job specs (``-``: standard input)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            specs = msgspec.json.decode(stripped)
        except msgspec.DecodeError as e:
            raise ShardwheelError(f"{path}: not a JSON array ({e})") from None
        return list(specs)
    specs = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                specs.append(msgspec.json.decode(line))
            except msgspec.DecodeError as e:
                raise ShardwheelError(f"{path}:{n}: not JSON ({e})") from None
    return specs


def jobs_import(args: argparse.Namespace) -> int:
    """Batches of 1,000 through ``POST /v1/jobs:batch``, three in flight; each batch's Idempotency-Key derives
    from the file's content and the batch's place in it, so running the same import again after a failure
    creates nothing twice."""
    import hashlib

    from rich.progress import Progress

    specs = _read_specs(args.file)
    if not specs:
        raise ShardwheelError(f"{args.file}: no job specs")
    digest = hashlib.sha256(msgspec.json.encode(specs)).hexdigest()[:32]
    failures: list[tuple[int, str]] = []
    created = 0
    with _client(args) as api, Progress(console=console, transient=True, disable=args.json) as progress, \
            ThreadPoolExecutor(_IMPORTS_IN_FLIGHT) as pool:  # fmt: skip
        task = progress.add_task("importing", total=len(specs))

        def send(start: int) -> tuple[int, Any]:
            return start, api.json("POST", "/v1/jobs:batch", json={"jobs": specs[start : start + _BATCH]},
                                   headers={"idempotency-key": f"import-{digest}-{start}"})  # fmt: skip

        for done in as_completed([pool.submit(send, start) for start in range(0, len(specs), _BATCH)]):
            start, answer = done.result()
            for item in answer["items"]:
                if item.get("problem"):
                    failures.append((start + item["index"], ApiError(item["status"], item["problem"]).args[0]))
                else:
                    created += 1
            progress.advance(task, len(answer["items"]))
    failures.sort()
    if args.json:
        _print_json({"created": created, "failed": [{"index": i, "error": e} for i, e in failures]})
    else:
        console.print(f"imported {created} of {len(specs)} jobs" + (f"; {len(failures)} failed:" if failures else ""))
        for i, error in failures[:50]:
            console.print(f"  #{i + 1}: {error}")
        if len(failures) > 50:
            console.print(f"  ... and {len(failures) - 50} more (--json lists all)")
    return 1 if failures else 0


def jobs_export(args: argparse.Namespace) -> int:
    """JSON lines of specs (header values redacted, as every read shows them), ready for ``jobs import``."""
    with _client(args) as api:
        for job in _pages(api, {"tag": args.tag, "state": args.state, "q": args.q}, 0):
            sys.stdout.write(msgspec.json.encode(job["spec"]).decode() + "\n")
    return 0


# ---- runs, alerts, stats -------------------------------------------------------------------------------------


def runs_list(args: argparse.Namespace) -> int:
    status = ["failed", "lost", "skipped_misfire"] if args.failed else args.status
    with _client(args) as api:
        page = api.json("GET", "/v1/executions", params={"status": status, "since": args.since,
                                                           "until": args.until, "limit": args.limit})  # fmt: skip
    _print_json(page["items"]) if args.json else print_executions(page["items"], with_job=True)
    return 0


def alerts_list(args: argparse.Namespace) -> int:
    with _client(args) as api:
        page = api.json("GET", "/v1/alerts", params={"unacked": args.unacked or None, "limit": args.limit})
    if args.json:
        _print_json(page["items"])
        return 0
    t = table("id", "kind", "job", "at (UTC)", "message", widths={"kind": 16, "job": 8, "message": 60})
    for a in page["items"]:
        acked = "" if a.get("acked_at") is None else " (acked)"
        t.add_row(a["id"], a["kind"] + acked, str(a["job_id"]), str(a["created_at"])[:19].replace("T", " "),
                  (a.get("message") or "-").splitlines()[0])  # fmt: skip
    show(t, flexible=("message", "kind"))
    return 0


def alerts_ack(args: argparse.Namespace) -> int:
    with _client(args) as api:
        answer = api.json("POST", f"/v1/alerts/{args.alert}/ack")
    _print_json(answer) if args.json else console.print(f"alert {args.alert} acknowledged")
    return 0


def stats(args: argparse.Namespace) -> int:
    with _client(args) as api:
        s = api.json("GET", "/v1/stats", params={"window": args.window})
    if args.json:
        _print_json(s)
        return 0
    lag = s["lag_ms"]
    rate = "-" if s["success_rate"] is None else f"{100 * s['success_rate']:.2f} %"
    console.print(f"window {s['since'][:19]} .. {s['until'][:19]} (UTC)")
    console.print("jobs:       " + (", ".join(f"{k} {v}" for k, v in sorted(s["jobs"].items())) or "none"))
    console.print("executions: " + (", ".join(f"{k} {v}" for k, v in sorted(s["executions"].items())) or "none"))
    console.print(f"success:    {rate}")
    console.print("lag ms:     " + ", ".join(f"{k} {'-' if v is None else f'{v:,.0f}'}" for k, v in lag.items()))
    return 0


# ---- keys (API) and cluster (API) ----------------------------------------------------------------------------


def keys_via_api(args: argparse.Namespace) -> int:
    with _client(args) as api:
        if args.op == "create":
            body = {"role": args.role, "tenant": args.tenant, "name": args.name,
                    "rate_limit_per_s": args.rate_limit, "burst": args.burst}  # fmt: skip
            key = api.json("POST", "/v1/keys", json={k: v for k, v in body.items() if v is not None})
            if args.json:
                _print_json(key)
            else:
                print(key["secret"])
                print(f"# key {key['prefix']}... for tenant {key['tenant']}, role {key['role']}: shown once, store it")
            return 0
        if args.op == "revoke":
            if not args.key_id:
                raise ShardwheelError("keys revoke needs the key's id (keys list shows them)")
            answer = api.json("DELETE", f"/v1/keys/{args.key_id}")
            _print_json(answer) if args.json else console.print(f"key {args.key_id} revoked")
            return 0
        keys = api.json("GET", "/v1/keys")["items"]
    if args.json:
        _print_json(keys)
        return 0
    t = table("id", "prefix", "tenant", "role", "name", widths={"tenant": 12, "name": 16})
    for k in keys:
        t.add_row(k["id"], k["prefix"], k["tenant"], "revoked" if k.get("revoked_at") else k["role"], k["name"] or "-")
    show(t, flexible=("tenant", "name"))
    return 0


_CLUSTER_POSTS = {"rebalance": "/v1/cluster/rebalance", "pause": "/v1/cluster/pause",
                  "resume": "/v1/cluster/resume", "drain": "/v1/cluster/nodes/{0}/drain",
                  "undrain": "/v1/cluster/nodes/{0}/undrain", "move": "/v1/cluster/shards/{0}/move",
                  "unpin": "/v1/cluster/shards/{0}/unpin"}  # fmt: skip


def cluster_via_api(args: argparse.Namespace) -> int:
    with _client(args) as api:
        if args.op == "status":
            status = api.json("GET", "/v1/cluster")
            _print_json(status) if args.json else print_cluster(status)
            return 0
        path = _CLUSTER_POSTS[args.op].format(*args.args)
        answer = api.json("POST", path, json={"node": args.args[1]} if args.op == "move" else None)
    _print_json(answer) if args.json else console.print(answer.get("message", "done"))
    return 0


# ---- the parsers ---------------------------------------------------------------------------------------------


def example(parser: argparse.ArgumentParser, text: str) -> None:
    """``--help`` ends with ``text`` as an example."""
    parser.epilog = "example:\n  " + text.replace("\n", "\n  ")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _job_filters(p: argparse.ArgumentParser) -> None:
    from protocol.jobs import JobState

    p.add_argument("--tag", help="only jobs with this tag")
    p.add_argument("--state", choices=[s.value for s in JobState if s is not JobState.DELETED])
    p.add_argument("-q", help="part of the name")


def add_client_commands(sub: Any, parents: list[argparse.ArgumentParser],
                        parser_class: type[argparse.ArgumentParser]) -> None:
    settings = client_settings(parser_class)
    both = [*parents, settings]

    jobs = sub.add_parser("jobs", help="create, list, change and fire jobs (through the control API)")
    example(jobs, "shardwheel jobs create --name hello --every 5s --url http://127.0.0.1:8099/hello\n"
                   "shardwheel jobs list --tag reports")  # fmt: skip
    jsub = jobs.add_subparsers(dest="jobs_op", required=True, parser_class=parser_class)

    def job_parser(name: str, help_: str, shown: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = jsub.add_parser(name, parents=both, help=help_, description=help_)
        example(p, shown)
        return p

    c = job_parser("create", "create a job from flags or from a JSON/YAML file (flags override the file)",
                   "shardwheel jobs create --name report --cron '0 30 2 * * *' --tz Europe/London \\\n"
                   "    --url https://reports.example.com/run --header 'Authorization: Bearer x' --tag reports\n"
                   "shardwheel jobs create --file job.yaml")  # fmt: skip
    c.add_argument("--file", help="a job spec (JSON or YAML; - reads standard input)")
    c.add_argument("--name")
    c.add_argument("--cron", help="six fields with seconds: '0 */5 * * * *'")
    c.add_argument("--every", help="a period: 30s, 5m, 1h30m")
    c.add_argument("--at", help="one instant, RFC 3339: 2026-12-01T09:00:00Z")
    c.add_argument("--tz", help="the IANA zone of a cron schedule (default UTC)")
    c.add_argument("--url", help="the target URL")
    c.add_argument("--method", help="HTTP method (default POST)")
    c.add_argument("--header", action="append", metavar="'NAME: VALUE'", help="a target header (repeatable)")
    c.add_argument("--body", help="the request body: JSON, or @file")
    c.add_argument("--tag", action="append", help="a tag (repeatable)")
    c.add_argument("--description")
    c.add_argument("--semantics", choices=["AT_LEAST_ONCE", "AT_MOST_ONCE"])
    c.add_argument("--jitter", help="send each slot at a fixed per-job offset of up to this much: 30s (at most 1h)")
    c.add_argument("--idempotency-key", help="sent as Idempotency-Key: the same key creates the job once")
    c.set_defaults(func=jobs_create)

    ls = job_parser("list", "list jobs, oldest first (pages through the API's cursor)",
                    "shardwheel jobs list --state paused --limit 0")
    _job_filters(ls)
    ls.add_argument("--limit", type=int, default=100, help="at most this many (0: all; default 100)")
    ls.set_defaults(func=jobs_list)

    for name, help_, func in (("get", "show a job", jobs_get),
                              ("edit", "edit a job's spec in $EDITOR (sent with If-Match)", jobs_edit),
                              ("pause", "pause a job", _job_action("pause")),
                              ("resume", "resume a job", _job_action("resume")),
                              ("trigger", "fire a job once now (origin manual)", _job_action("trigger")),
                              ("delete", "delete a job (its id is never used again)", _job_action("delete"))):  # fmt: skip
        p = job_parser(name, help_, f"shardwheel jobs {name} hello        # a job's name or id")
        p.add_argument("job", help="the job's id or its name")
        if name == "trigger":
            p.add_argument("--idempotency-key", help="the same key fires once")
        p.set_defaults(func=func)

    r = job_parser("runs", "a job's executions, newest first, with drift and HTTP status",
                   "shardwheel jobs runs hello --limit 50 --status failed")
    r.add_argument("job", help="the job's id or its name")
    r.add_argument("--limit", type=int, default=20)
    r.add_argument("--status", action="append", help="only these statuses (repeatable)")
    r.set_defaults(func=jobs_runs)

    pv = job_parser("preview", "the next instants of a job, or of a schedule given here, with DST notes",
                    "shardwheel jobs preview --cron '0 30 2 * * *' --tz America/New_York -n 5\n"
                    "shardwheel jobs preview hello")  # fmt: skip
    pv.add_argument("job", nargs="?", help="the job's id or its name")
    pv.add_argument("--cron")
    pv.add_argument("--every")
    pv.add_argument("--at")
    pv.add_argument("--tz", default="UTC")
    pv.add_argument("-n", type=int, default=10)
    pv.set_defaults(func=jobs_preview)

    b = job_parser("backfill", "fire every slot of a past range now (origin backfill)",
                   "shardwheel jobs backfill report --from 2026-11-01T00:00:00Z --to 2026-11-08T00:00:00Z")
    b.add_argument("job", help="the job's id or its name")
    b.add_argument("--from", dest="from_", required=True, help="RFC 3339, inclusive")
    b.add_argument("--to", required=True, help="RFC 3339, exclusive")
    b.add_argument("--idempotency-key")
    b.set_defaults(func=jobs_backfill)

    im = job_parser("import", "create many jobs from JSON lines or a JSON array (batches of 1,000)",
                    "shardwheel jobs import jobs.jsonl")
    im.add_argument("file", help="JSON lines or a JSON array of job specs (- reads standard input)")
    im.set_defaults(func=jobs_import)

    ex = job_parser("export", "print jobs' specs as JSON lines (header values redacted), for jobs import",
                    "shardwheel jobs export --tag reports > reports.jsonl")
    _job_filters(ex)
    ex.set_defaults(func=jobs_export)

    runs = sub.add_parser("runs", help="executions across your jobs")
    example(runs, "shardwheel runs list --failed")
    rsub = runs.add_subparsers(dest="runs_op", required=True, parser_class=parser_class)
    rl = rsub.add_parser("list", parents=both, help="recent executions across jobs, newest first")
    example(rl, "shardwheel runs list --failed --since 2026-11-28T00:00:00Z")
    rl.add_argument("--failed", action="store_true", help="only failed, lost and skipped ones")
    rl.add_argument("--status", action="append", help="only these statuses (repeatable)")
    rl.add_argument("--since", help="RFC 3339 (default: an hour ago)")
    rl.add_argument("--until", help="RFC 3339 (default: now)")
    rl.add_argument("--limit", type=int, default=50)
    rl.set_defaults(func=runs_list)

    alerts = sub.add_parser("alerts", help="failure alerts: list and acknowledge")
    example(alerts, "shardwheel alerts list --unacked")
    asub = alerts.add_subparsers(dest="alerts_op", required=True, parser_class=parser_class)
    al = asub.add_parser("list", parents=both, help="alerts, newest first")
    example(al, "shardwheel alerts list --unacked")
    al.add_argument("--unacked", action="store_true")
    al.add_argument("--limit", type=int, default=50)
    al.set_defaults(func=alerts_list)
    ak = asub.add_parser("ack", parents=both, help="acknowledge an alert")
    example(ak, "shardwheel alerts ack 0196d1c2-...")
    ak.add_argument("alert", help="the alert's id")
    ak.set_defaults(func=alerts_ack)

    st = sub.add_parser("stats", parents=both, help="jobs by state, executions by status, success rate, lag")
    example(st, "shardwheel stats --window 24h")
    st.add_argument("--window", default="1h", help="1m to 7d (default 1h)")
    st.set_defaults(func=stats)
