"""The control API end to end, as users run it: `shardwheel api` and two `shardwheel node` processes in
cluster mode, real PostgreSQL and etcd, a recording target on 127.0.0.1. Writes are routed to the shard's
owner; a job created at second t fires at t+1; every error is problem details naming the field, and a refused
write stores nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio

from protocol.jitter import jitter_offset_ms
from scheduler_node.store import Role
from shardwheel.embedded import EmbeddedEtcd, free_port

from ..scheduler_node.cluster_harness import Cluster, balanced, cluster
from ..scheduler_node.harness import SECRET, Behaviour, query, target_running, wait_for

pytestmark = pytest.mark.slow


def _key(dsn: str, tenant: str, role: Role, *extra: str) -> str:
    """A key made as an operator makes the first one: ``shardwheel keys create`` (the secret, once)."""
    out = subprocess.run([sys.executable, "-m", "shardwheel.cli", "keys", "create", "--dsn", dsn, "--tenant", tenant,
                          "--role", role.value, *extra], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    secret, note = out.stdout.splitlines()
    assert secret.startswith("sw_") and f"tenant {tenant}, role {role.value}" in note
    return secret


@contextmanager
def api_process(dsn: str, etcd: str, prefix: str, *extra: str) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDWHEEL_")}
    args = [sys.executable, "-m", "shardwheel.cli", "api", "--dsn", dsn, "--etcd", etcd, "--etcd-prefix", prefix,
            "--port", str(port), "--cluster-secret", SECRET, "--dev", "--log-level", "warning", *extra]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@asynccontextmanager
async def running_cluster(db_dsn: str, etcd: EmbeddedEtcd, prefix: str, *api_args: str,
                          nodes: tuple[str, ...] = ("n1", "n2"), into: list[Cluster] | None = None,
                          ) -> AsyncIterator[str]:  # fmt: skip
    """Nodes in cluster mode, balanced, and the API before them; its URL (``into`` receives the cluster)."""
    with cluster(db_dsn, etcd.endpoint, prefix) as c:
        if into is not None:
            into.append(c)
        for n in nodes:
            c.start(n)
        await trio.to_thread.run_sync(lambda: c.wait_for(lambda v: balanced(v, set(nodes)), what="balanced"))
        with api_process(db_dsn, etcd.endpoint, prefix, *api_args) as url:
            async with httpx.AsyncClient(base_url=url, timeout=15) as client:

                async def ready() -> bool:
                    try:
                        return (await client.get("/readyz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await wait_for(ready, timeout=30)
            yield url


def _job(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": "api-job", "schedule": {"kind": "cron", "cron": "* * * * * *"}, "target": {"url": url}, **kw}


async def test_jobs_through_the_api(db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str) -> None:
    writer = await trio.to_thread.run_sync(_key, db_dsn, "acme", Role.WRITER)
    reader = await trio.to_thread.run_sync(_key, db_dsn, "acme", Role.READER)
    other = await trio.to_thread.run_sync(_key, db_dsn, "globex", Role.ADMIN)
    async with target_running() as target, running_cluster(db_dsn, etcd_server, etcd_prefix) as url:
        w = httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {writer}"}, timeout=30)
        r = httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {reader}"}, timeout=30)
        g = httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {other}"}, timeout=30)
        async with w, r, g:
            secret_target = {"url": target.url("/api"), "headers": {"Authorization": "Bearer s3cr3t-t0ken"}}
            created = await w.post("/v1/jobs", json=_job(target.url("/api"), target=secret_target))
            assert created.status_code == 201, created.text
            job = created.json()
            assert created.headers["location"] == f"/v1/jobs/{job['id']}"
            assert created.headers["etag"] == '"1"' and job["state"] == "active" and job["tenant"] == "acme"

            # Routed to the owner, which put it in its wheel before answering: it fires within 2 s.
            await wait_for(lambda: _at_least(target, "/api", 1), timeout=5)

            # Target headers are secrets: sealed at rest, sent as given, never shown.
            assert target.at("/api")[0].headers["authorization"] == "Bearer s3cr3t-t0ken"
            assert job["spec"]["target"]["headers"] == {"Authorization": "<redacted>"}
            (row,) = await query(db_dsn, "SELECT spec::text AS spec FROM jobs WHERE id = $1", uuid.UUID(job["id"]))
            assert "s3cr3t" not in row["spec"] and "swenc:dev:" in row["spec"]

            got = await r.get(f"/v1/jobs/{job['id']}")
            assert got.status_code == 200 and got.json()["spec"]["name"] == "api-job"
            listed = (await r.get("/v1/jobs", params={"limit": 10})).json()
            assert [j["id"] for j in listed["items"]] == [job["id"]] and listed["next_cursor"] is None

            # Preview: a job's next instants, and a schedule's before it is a job.
            preview = (await r.get(f"/v1/jobs/{job['id']}/preview", params={"n": 3})).json()["instants"]
            assert len(preview) == 3 and all(p["utc"].endswith("Z") or "+00:00" in p["utc"] for p in preview)
            # A job with jitter: sent its offset (fixed by its id) after each slot, which the request still names;
            # its preview says when each slot is sent.
            jittered = (await w.post("/v1/jobs", json=_job(target.url("/j"), name="j", jitter="3s"))).json()
            offset = jitter_offset_ms(uuid.UUID(jittered["id"]), "3s")
            # next_fire_at is the next send: a whole second (the cron's slot) plus the offset
            view = (await r.get(f"/v1/jobs/{jittered['id']}")).json()
            for shown_at in (jittered["next_fire_at"], view["next_fire_at"]):
                assert (round(datetime.fromisoformat(shown_at).timestamp() * 1000) - offset) % 1000 == 0
            await wait_for(lambda: _at_least(target, "/j", 1), timeout=10)
            got_j = target.at("/j")[0]
            slot = datetime.fromisoformat(got_j.slot)
            assert slot.microsecond == 0  # a whole second of the every-second cron, not moved by the offset
            assert 0 <= got_j.at_ms - (slot.timestamp() * 1000 + offset) < 5_000  # never before slot + offset
            shown = (await r.get(f"/v1/jobs/{jittered['id']}/preview", params={"n": 2})).json()["instants"]
            assert [p["jitter_offset_ms"] for p in shown] == [offset] * 2
            assert all(datetime.fromisoformat(p["fires_at"]) - datetime.fromisoformat(p["utc"])
                       == timedelta(milliseconds=offset) for p in shown)  # fmt: skip
            assert (await w.delete(f"/v1/jobs/{jittered['id']}")).status_code == 200
            bad = await w.post("/v1/jobs", json=_job(target.url("/j"), jitter="2h"))
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "jitter"
            spring = await r.post("/v1/schedules/preview", json={
                "schedule": {"kind": "cron", "cron": "0 30 1 29 3 *"}, "timezone": "Europe/London", "n": 2})
            assert spring.status_code == 200, spring.text
            assert [(p["local"][:16], p["dst"]) for p in spring.json()["instants"]][0][1] in ("gap", None)
            assert (await r.post("/v1/schedules/preview", json={"schedule": {"kind": "cron", "cron": "x"}})
                    ).json()["errors"][0]["field"] == "schedule.cron"  # fmt: skip
            assert (await r.post("/v1/schedules/preview", json={"schedule": {"kind": "every", "every": "5s"},
                                                               "n": 500})).json()["errors"][0]["field"] == "n"

            # Tenants never see each other's jobs; a reader cannot write; no key is 401.
            assert (await g.get(f"/v1/jobs/{job['id']}")).status_code == 404
            assert (await g.get("/v1/jobs")).json()["items"] == []
            forbidden = await r.post(f"/v1/jobs/{job['id']}/pause")
            assert forbidden.status_code == 403 and forbidden.headers["content-type"] == "application/problem+json"
            assert (await httpx.AsyncClient(base_url=url).get("/v1/jobs")).status_code == 401
            bad_key = await r.get("/v1/jobs", headers={"authorization": "Bearer sw_nope"})
            assert bad_key.status_code == 401 and bad_key.json()["type"] == "urn:shardwheel:problem:unauthorized"

            # Conditional writes: a stale If-Match is 412, the right one applies.
            stale = await w.post(f"/v1/jobs/{job['id']}/pause", headers={"if-match": '"7"'})
            assert stale.status_code == 412 and stale.json()["expected"] == 7 and stale.json()["actual"] == 1
            paused = await w.post(f"/v1/jobs/{job['id']}/pause", headers={"if-match": '"1"'})
            assert paused.status_code == 200 and paused.json()["state"] == "paused"
            resumed = await w.post(f"/v1/jobs/{job['id']}/resume")
            assert resumed.json()["state"] == "active"
            # Replace and merge patch need If-Match (428 without, 412 stale); a patch changes only what it names.
            jid = job["id"]
            version = int((await r.get(f"/v1/jobs/{jid}")).headers["etag"].strip('"'))
            assert (await w.patch(f"/v1/jobs/{jid}", json={"description": "x"})).status_code == 428
            stale_patch = await w.patch(f"/v1/jobs/{jid}", json={"description": "x"}, headers={"if-match": '"1"'})
            assert stale_patch.status_code == 412
            patched = await w.patch(f"/v1/jobs/{jid}", headers={"if-match": f'"{version}"'},
                                    json={"description": "patched", "tags": ["nightly"], "retry": {"max_attempts": 5}})
            assert patched.status_code == 200, patched.text
            spec = patched.json()["spec"]
            assert (spec["description"], spec["tags"], spec["retry"]["max_attempts"]) == ("patched", ["nightly"], 5)
            assert spec["retry"]["initial_backoff_ms"] == 1000 and spec["name"] == "api-job"  # the rest as it was
            assert patched.headers["etag"] == f'"{version + 1}"'
            assert spec["target"]["headers"] == {"Authorization": "<redacted>"}  # kept sealed through the patch
            (row,) = await query(db_dsn, "SELECT spec::text AS spec FROM jobs WHERE id = $1", uuid.UUID(jid))
            assert "swenc:dev:" in row["spec"]
            kind_change = await w.patch(f"/v1/jobs/{jid}", headers={"if-match": f'"{version + 1}"'},
                                        json={"schedule": {"kind": "every", "every": "1s"}})
            assert kind_change.status_code == 200 and kind_change.json()["spec"]["schedule"] == {
                "kind": "every", "every": "1s"}  # fmt: skip
            bad_patch = await w.patch(f"/v1/jobs/{jid}", headers={"if-match": f'"{version + 2}"'},
                                      json={"timeout_ms": -1})
            assert bad_patch.status_code == 422 and bad_patch.json()["errors"][0]["field"] == "timeout_ms"
            replaced = await w.put(f"/v1/jobs/{jid}", headers={"if-match": f'"{version + 2}"'},
                                   json=_job(target.url("/api")))
            assert replaced.status_code == 200 and replaced.json()["spec"]["description"] == ""
            assert (await w.put(f"/v1/jobs/{jid}", json=_job(target.url("/api")))).status_code == 428
            once = {"idempotency-key": "trigger-1"}
            trigger = await w.post(f"/v1/jobs/{job['id']}/trigger", headers=once)
            assert trigger.status_code == 202
            again = await w.post(f"/v1/jobs/{job['id']}/trigger", headers=once)  # a retry: fires no second slot
            same = ("job_id", "version", "state")
            assert again.status_code == 202 and [again.json()[k] for k in same] == [trigger.json()[k] for k in same]

            async def manual() -> bool:
                rows = await query(db_dsn, "SELECT 1 FROM executions WHERE job_id = $1 AND origin = 'manual'",
                                   uuid.UUID(job["id"]))  # fmt: skip
                return len(rows) == 1

            await wait_for(manual, timeout=10)

            async def three_runs() -> bool:
                return len(await query(db_dsn, "SELECT 1 FROM executions WHERE job_id = $1", uuid.UUID(jid))) >= 3

            await wait_for(three_runs, timeout=10)
            # The job as read: its next firing from the schedule and the slots already claimed, its last result.
            seen = (await r.get(f"/v1/jobs/{jid}")).json()
            assert seen["last_result"]["status"] in ("succeeded", "failed") and seen["last_result"]["job_id"] == jid
            assert datetime.fromisoformat(seen["next_fire_at"]) > datetime.now(UTC) - timedelta(seconds=1)
            page = (await r.get(f"/v1/jobs/{jid}/executions", params={"limit": 2})).json()
            assert len(page["items"]) == 2 and page["next_before"] is not None
            slots = [datetime.fromisoformat(e["scheduled_at"]) for e in page["items"]]
            assert slots[0] > slots[1]  # newest first
            older = (await r.get(f"/v1/jobs/{jid}/executions",
                                 params={"limit": 2, "before": page["next_before"]})).json()  # fmt: skip
            cut = datetime.fromisoformat(page["next_before"])
            assert older["items"] and all(datetime.fromisoformat(e["scheduled_at"]) < cut for e in older["items"])
            done = (await r.get(f"/v1/jobs/{jid}/executions", params={"status": "succeeded"})).json()["items"]
            assert done and all(e["status"] == "succeeded" and e["attempts"] for e in done)
            assert (await g.get(f"/v1/jobs/{jid}/executions")).status_code == 404
            assert (await r.get(f"/v1/jobs/{jid}/executions", params={"status": "nope"})).status_code == 422
            deleted = await w.delete(f"/v1/jobs/{job['id']}")
            assert deleted.status_code == 200 and deleted.json()["state"] == "deleted"
            assert (await r.get(f"/v1/jobs/{job['id']}")).status_code == 404

            # A failing job raises an alert; the tenant lists it and acknowledges it.
            target.behaviours["/fails"] = Behaviour(status=500)
            at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
            failing = await w.post("/v1/jobs", json=_job(target.url("/fails"), schedule={"kind": "at", "at": at},
                                                         retry={"max_attempts": 1}))  # fmt: skip
            assert failing.status_code == 201

            async def alerted() -> bool:
                return bool((await r.get("/v1/alerts", params={"unacked": "true"})).json()["items"])

            await wait_for(alerted, timeout=15)
            (alert,) = (await r.get("/v1/alerts")).json()["items"]
            assert alert["kind"] == "execution_failed" and alert["job_id"] == failing.json()["id"]
            assert (await g.get("/v1/alerts")).json()["items"] == []  # another tenant's
            assert (await r.post(f"/v1/alerts/{alert['id']}/ack")).status_code == 403  # a reader
            acked = await w.post(f"/v1/alerts/{alert['id']}/ack")
            assert acked.status_code == 200 and acked.json()["acked_at"] is not None
            assert (await r.get("/v1/alerts", params={"unacked": "true"})).json()["items"] == []
            assert (await g.post(f"/v1/alerts/{alert['id']}/ack")).status_code == 404

            # Idempotency-Key on a create: a retry answers the first job; another body with the key is 409.
            paused_job = _job("https://example.com/idem")
            first = await w.post("/v1/jobs", json=paused_job, headers={"idempotency-key": "create-1"})
            retry = await w.post("/v1/jobs", json=paused_job, headers={"idempotency-key": "create-1"})
            assert first.status_code == retry.status_code == 201 and first.json()["id"] == retry.json()["id"]
            other = await w.post("/v1/jobs", json=_job("https://example.com/other"),
                                 headers={"idempotency-key": "create-1"})  # fmt: skip
            assert other.status_code == 422 and other.json()["type"].endswith(":idempotency-key-reused")
            await w.delete(f"/v1/jobs/{first.json()['id']}")

            # Bad input: 4xx naming the field, nothing stored.
            for body, status, field in [
                (_job("https://example.com/", timeout_ms=0), 422, "timeout_ms"),
                (_job("https://example.com/", schedule={"kind": "cron", "cron": "0 61 * * * *"}), 422,
                 "schedule.cron"),
                (_job("http://169.254.169.254/"), 422, "target.url"),
                (_job("https://example.com/", timout_ms=5), 422, "timout_ms"),
                (_job("https://example.com/", timezone="America"), 422, "timezone"),
            ]:  # fmt: skip
                answer = await w.post("/v1/jobs", json=body)
                assert answer.status_code == status, answer.text
                problem = answer.json()
                assert answer.headers["content-type"] == "application/problem+json"
                assert [e["field"] for e in problem["errors"]] == [field], problem
            malformed = await w.post("/v1/jobs", content=b"{not json")
            assert malformed.status_code == 422 and malformed.headers["content-type"] == "application/problem+json"
            for path in ("/v1/jobs/not-a-uuid", "/v1/jobs/00000000-0000-0000-0000-000000000000"):
                answer = await r.get(path)
                assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "id"
            assert (await r.get("/v1/jobs", params={"limit": 5000})).status_code == 422
            assert (await r.get("/nowhere")).json()["type"] == "urn:shardwheel:problem:not-found"
            docs = await httpx.AsyncClient(base_url=url).get("/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
            schema = (await r.get("/openapi.json")).json()
            assert "requestBody" in schema["paths"]["/v1/jobs"]["post"]
            assert {"createJob", "getJob", "listJobs", "deleteJob", "pauseJob", "resumeJob", "triggerJob"} <= {
                op["operationId"] for item in schema["paths"].values() for op in item.values() if "operationId" in op
            }
    rows = await query(db_dsn, "SELECT count(*) AS n FROM jobs")
    assert rows[0]["n"] == 4  # the four jobs created above (one twice, idempotently; the deleted one counted)


async def _at_least(target: Any, path: str, n: int) -> bool:
    return len(target.at(path)) >= n


async def test_many_jobs_at_once_and_backfill(db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str) -> None:
    writer = await trio.to_thread.run_sync(_key, db_dsn, "acme", Role.WRITER)
    # Two API worker processes on one port (shardwheel api --workers 2): every answer below is either's.
    async with target_running() as target, running_cluster(db_dsn, etcd_server, etcd_prefix, "--workers", "2") as url:
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {writer}"}, timeout=60) as w:
            # jobs:batch: one result per job in order; a bad one fails alone, naming its field.
            paused_later = [_job("https://example.com/b", name=f"b{i}", tags=["batch", f"n{i % 2}"])
                            for i in range(300)]  # fmt: skip
            paused_later[7] = _job("https://example.com/b", timeout_ms=0)
            batch = await w.post("/v1/jobs:batch", json={"jobs": paused_later})
            assert batch.status_code == 200, batch.text
            out = batch.json()
            assert (out["succeeded"], out["failed"]) == (299, 1) and [i["index"] for i in out["items"]] == list(
                range(300))
            bad = out["items"][7]
            assert bad["status"] == 422 and bad["problem"]["errors"][0]["field"] == "timeout_ms"
            ids = [i["id"] for i in out["items"] if i["status"] == 201]
            assert len(set(ids)) == 299 and all(i.get("created") for i in out["items"] if i["status"] == 201)
            # An Idempotency-Key makes a batch retry-safe: the same body names the same jobs, created once.
            two = {"jobs": [_job("https://example.com/k", name="k1"), _job("https://example.com/k", name="k2")]}
            first = (await w.post("/v1/jobs:batch", json=two, headers={"idempotency-key": "import-1"})).json()
            again = (await w.post("/v1/jobs:batch", json=two, headers={"idempotency-key": "import-1"})).json()
            assert [i["id"] for i in first["items"]] == [i["id"] for i in again["items"]]
            assert [i["created"] for i in again["items"]] == [False, False]
            reused = await w.post("/v1/jobs:batch", json={"jobs": two["jobs"][:1]},
                                  headers={"idempotency-key": "import-1"})  # fmt: skip
            assert reused.status_code == 422
            for body, field in [({"jobs": []}, "jobs"), ({"jobs": [{}] * 1001}, "jobs"), ({"job": []}, "job")]:
                refused = await w.post("/v1/jobs:batch", json=body)
                assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == field, refused.text

            # Bulk by tag and by ids; every item answered.
            paused = (await w.post("/v1/jobs:bulk-pause", json={"tag": "n0"})).json()
            assert paused["succeeded"] == 150 and {i["state"] for i in paused["items"]} == {"paused"}
            listed = (await w.get("/v1/jobs", params={"tag": "batch", "state": "paused", "limit": 1000})).json()
            assert len(listed["items"]) == 150
            resumed = (await w.post("/v1/jobs:bulk-resume", json={"ids": ids[:3] + [str(uuid.uuid4())]})).json()
            assert [i["status"] for i in resumed["items"]] == [200, 200, 200, 404]
            assert (await w.post("/v1/jobs:bulk-pause", json={"ids": ids[:1], "tag": "x"})).status_code == 422
            assert (await w.post("/v1/jobs:bulk-pause", json={"ids": ids[:1] * 2})).status_code == 422
            deleted = (await w.post("/v1/jobs:bulk-delete", json={"tag": "batch"})).json()
            assert deleted["succeeded"] == 299
            assert (await w.get("/v1/jobs", params={"tag": "batch"})).json()["items"] == []

            # Backfill: every slot of a past range fires now, origin backfill; the same range again fires none.
            hourly = await w.post("/v1/jobs", json=_job(target.url("/backfill"), schedule={"kind": "cron",
                                                                                         "cron": "0 0 * * * *"}))
            jid = hourly.json()["id"]
            now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            span = {"from": (now - timedelta(hours=5)).isoformat(), "to": (now - timedelta(hours=2)).isoformat()}
            filled = await w.post(f"/v1/jobs/{jid}/backfill", json=span)
            assert filled.status_code == 202 and filled.json()["slots"] == 3, filled.text
            await wait_for(lambda: _at_least(target, "/backfill", 3), timeout=10)
            sent = sorted(datetime.fromisoformat(r.headers["x-shardwheel-scheduled-at"]) for r in target.at("/backfill"))
            assert sent == [now - timedelta(hours=h) for h in (5, 4, 3)]
            runs = (await w.get(f"/v1/jobs/{jid}/executions")).json()["items"]
            assert {e["origin"] for e in runs} == {"backfill"} and len(runs) == 3
            assert (await w.post(f"/v1/jobs/{jid}/backfill", json=span)).status_code == 202
            for body, field in [({"from": span["from"]}, "to"), ({**span, "to": "2999-01-01T00:00:00Z"}, "to"),
                                ({**span, "x": 1}, "x"),
                                ({"from": "2020-01-01T00:00:00Z", "to": now.isoformat()}, "to")]:  # fmt: skip
                refused = await w.post(f"/v1/jobs/{jid}/backfill", json=body)
                assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == field, refused.text
    rows = await query(db_dsn, "SELECT count(*) AS n FROM executions WHERE origin = 'backfill'")
    assert rows[0]["n"] == 3


async def test_history_audit_keys_and_the_cluster(db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str) -> None:
    admin = await trio.to_thread.run_sync(_key, db_dsn, "ops", Role.ADMIN)
    slow = await trio.to_thread.run_sync(_key, db_dsn, "acme", Role.READER, "--rate-limit", "0.2", "--burst", "3")
    async with target_running() as target, \
            running_cluster(db_dsn, etcd_server, etcd_prefix, "--max-jobs-per-tenant", "4") as url:  # fmt: skip
        a = httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {admin}"}, timeout=60)
        async with a:
            # Keys: an admin makes a writer key for a tenant (the secret once), lists and revokes it.
            made = await a.post("/v1/keys", json={"tenant": "acme", "role": "writer", "name": "ci"})
            assert made.status_code == 201, made.text
            secret, key_id = made.json()["key"], made.json()["id"]
            listed = (await a.get("/v1/keys", params={"tenant": "acme"})).json()["items"]
            assert [k["id"] for k in listed if k["name"] == "ci"] == [key_id] and all("key" not in k for k in listed)
            for body, field in [({"role": "boss"}, "role"), ({"role": "reader", "tenant": "a b"}, "tenant"),
                                ({"role": "reader", "burst": 0}, "burst"), ({"rol": "reader"}, "rol")]:  # fmt: skip
                refused = await a.post("/v1/keys", json=body)
                assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == field, refused.text
            w = httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {secret}"}, timeout=60)
            async with w:
                assert (await w.get("/v1/keys")).status_code == 403  # a writer is no admin
                assert (await w.get("/v1/cluster")).status_code == 403
                ok = _job(target.url("/hist"), tags=["hist"])
                ok_ids = [(await w.post("/v1/jobs", json=ok)).json()["id"] for _ in range(2)]
                target.behaviours["/bad"] = Behaviour(status=500)
                bad = (await w.post("/v1/jobs", json=_job(target.url("/bad"), retry={"max_attempts": 1}))).json()

                async def both_ran() -> bool:
                    page = (await w.get("/v1/executions", params={"limit": 500})).json()["items"]
                    ended = {e["job_id"] for e in page if e["status"] in ("succeeded", "failed")}
                    return ended >= {*ok_ids, bad["id"]}

                await wait_for(both_ran, timeout=15)
                # Across the tenant's jobs, newest first, filtered, paged without gaps or repeats.
                failed = (await w.get("/v1/executions", params={"status": "failed"})).json()["items"]
                assert failed and {e["job_id"] for e in failed} == {bad["id"]}
                seen: list[tuple[str, str]] = []
                cursor = None
                until = datetime.now(UTC).isoformat()
                while True:
                    params: dict[str, Any] = {"limit": 3, "until": until, **({"cursor": cursor} if cursor else {})}
                    page = (await w.get("/v1/executions", params=params)).json()
                    seen += [(e["scheduled_at"], e["job_id"]) for e in page["items"]]
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
                assert len(seen) == len(set(seen)) >= 3 and seen == sorted(seen, reverse=True)
                assert (await a.get("/v1/executions")).json()["items"] == []  # the admin's tenant has none
                for params, field in [({"status": "nope"}, "status"), ({"since": "2020-01-01T00:00:00"}, "since"),
                                      ({"since": "2020-01-01T00:00:00Z"}, "since"), ({"cursor": "x"}, "cursor"),
                                      ({"limit": "many"}, "limit")]:  # fmt: skip
                    refused = await w.get("/v1/executions", params=params)
                    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == field, refused.text

                # Limits: the tenant's quota (4 jobs) refuses a batch passing it, whole; a key over its rate
                # limit gets 429 with Retry-After; a body over 256 KiB is 413. All counted on /metrics.
                over = await w.post("/v1/jobs:batch", json={"jobs": [ok, ok]})
                assert over.status_code == 403 and over.json()["type"].endswith(":quota-exceeded"), over.text
                assert (await w.get("/v1/jobs")).json()["items"].__len__() == 3
                async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {slow}"}) as r:
                    answers = [await r.get("/v1/jobs") for _ in range(4)]
                assert [x.status_code for x in answers] == [200, 200, 200, 429]
                assert answers[3].headers["retry-after"] == "5" and answers[3].json()["type"].endswith(":rate-limited")
                huge = await w.post("/v1/jobs", json=_job("https://example.com/", description="x" * 300_000))
                assert huge.status_code == 413 and huge.headers["content-type"] == "application/problem+json"
                metrics = (await httpx.AsyncClient(base_url=url).get("/metrics")).text
                assert 'shardwheel_api_requests_total{method="GET",route="/v1/jobs",status="429"} 1' in metrics
                assert "shardwheel_api_rate_limited_total 1" in metrics
                assert "shardwheel_api_quota_refused_total 1" in metrics
                assert 'shardwheel_api_request_latency_count{route="/v1/jobs"}' in metrics

                # Stats from the nodes' rollups (added every 10 s): jobs by state, results, lag percentiles.
                async def counted() -> bool:
                    stats = (await w.get("/v1/stats", params={"window": "10m"})).json()
                    return bool(stats["executions"].get("failed")) and bool(stats["executions"].get("succeeded"))

                await wait_for(counted, timeout=30)
                stats = (await w.get("/v1/stats")).json()
                assert stats["jobs"] == {"active": 3} and 0 < stats["success_rate"] < 1
                assert 0 < stats["lag_ms"]["p50"] <= stats["lag_ms"]["p99"] < 5_000
                assert (await w.get("/v1/stats", params={"window": "30d"})).json()["errors"][0]["field"] == "window"
                assert (await a.get("/v1/stats")).json()["executions"] == {}  # another tenant's figures

                # The audit log: the writer's tenant only; an admin reads every tenant.
                mine = (await w.get("/v1/audit")).json()["items"]
                assert {e["action"] for e in mine} == {"job.upsert", "api_key.create"} and all(
                    e["tenant"] == "acme" for e in mine)  # fmt: skip
                one = (await w.get("/v1/audit", params={"job_id": bad["id"]})).json()["items"]
                assert [e["job_id"] for e in one] == [bad["id"]]
                assert (await w.get("/v1/audit", params={"tenant": "ops"})).status_code == 422
                everyone = (await a.get("/v1/audit", params={"limit": 1000})).json()["items"]
                assert {"acme"} <= {e["tenant"] for e in everyone}

                # The cluster: status, a shard moved by a pin, rebalancing paused and resumed, then audited.
                status = (await a.get("/v1/cluster")).json()
                assert {m["node"]: m["shards"] for m in status["members"]} == {"n1": 128, "n2": 128}
                assert status["unowned_shards"] == [] and status["shards"]["0"]["epoch"] >= 1
                owner = status["shards"]["0"]["owner"]
                other = "n2" if owner == "n1" else "n1"
                moved = await a.post("/v1/cluster/shards/0/move", json={"node": other})
                assert moved.status_code == 200, moved.text

                async def at_other() -> bool:
                    return (await a.get("/v1/cluster")).json()["shards"]["0"]["owner"] == other

                await wait_for(at_other, timeout=30)
                assert (await a.post("/v1/cluster/shards/0/unpin")).status_code == 200
                assert (await a.post("/v1/cluster/shards/9999/move", json={"node": other})).status_code == 422
                assert (await a.post("/v1/cluster/shards/1/move", json={"node": "n9"})).json()["errors"][0][
                    "field"] == "node"  # fmt: skip
                assert (await a.post("/v1/cluster/nodes/n9/drain")).status_code == 422
                assert (await a.post("/v1/cluster/pause")).status_code == 200
                assert (await a.get("/v1/cluster")).json()["rebalancing_paused"] is True
                assert (await a.post("/v1/cluster/resume")).status_code == 200
                assert (await a.post("/v1/cluster/rebalance")).status_code == 200
                actions = {e["action"] for e in (await a.get("/v1/audit", params={"tenant": "ops"})).json()["items"]}
                assert {"cluster.move", "cluster.unpin", "cluster.pause", "cluster.resume"} <= actions

                # Revoked: refused at once on this replica.
                assert (await a.delete(f"/v1/keys/{key_id}")).status_code == 200
                assert (await w.get("/v1/jobs")).status_code == 401
                assert (await a.delete(f"/v1/keys/{key_id}")).status_code == 404


async def test_writes_during_a_drain_and_a_node_kill_are_applied_once(
    db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str
) -> None:
    """Creates and triggers keep coming while one node is drained and another is killed -9: each answered
    201/202, or 503 with Retry-After and then retried with its Idempotency-Key; at the end every job exists
    once and every trigger fired once."""
    writer = await trio.to_thread.run_sync(_key, db_dsn, "acme", Role.WRITER)
    held: list[Cluster] = []
    async with target_running() as target, running_cluster(db_dsn, etcd_server, etcd_prefix,
                                                           nodes=("n1", "n2", "n3"), into=held) as url:  # fmt: skip
        (c,) = held
        w = httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {writer}"}, timeout=60)
        async with w:
            later = {"kind": "at", "at": "2099-01-01T00:00:00Z"}
            fired = (await w.post("/v1/jobs", json=_job(target.url("/t"), schedule=later))).json()["id"]
            created: dict[str, str] = {}
            triggered: set[str] = set()
            refusals = 0

            async def send(key: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
                nonlocal refusals
                for _ in range(60):  # bounded: each 503 comes after the API's own wait for an owner
                    r = await w.post(path, json=body, headers={"idempotency-key": key})
                    if r.status_code != 503:
                        return r
                    refusals += 1  # the API waited (bounded) for an owner before this 503: ask again at once
                    assert int(r.headers["retry-after"]) >= 1 and r.json()["type"].endswith(":unavailable")
                raise AssertionError(f"{key}: unavailable 60 times")

            async def writes(first: int, n: int) -> None:
                for i in range(first, first + n):
                    r = await send(f"c-{i}", "/v1/jobs", _job(target.url("/never"), schedule=later, name=f"w{i}"))
                    assert r.status_code == 201, r.text
                    created[f"c-{i}"] = r.json()["id"]
                    t = await send(f"t-{i}", f"/v1/jobs/{fired}/trigger", None)
                    assert t.status_code == 202, t.text
                    triggered.add(f"t-{i}")

            async with trio.open_nursery() as nursery:
                for k in range(3):
                    nursery.start_soon(writes, k * 1000, 40)
                await wait_for(lambda: _count_at_least(created, 10), timeout=60)
                await trio.to_thread.run_sync(_drain, c, "n1")  # moves a third of the shards, gracefully
                await wait_for(lambda: _count_at_least(created, 50), timeout=120)
                c.kill("n3")  # its shards wait out its lease, then move
            assert len(created) == 120 and len(triggered) == 120
    rows = await query(db_dsn, "SELECT id FROM jobs WHERE tenant = 'acme' AND name LIKE 'w%'")
    assert sorted(str(r["id"]) for r in rows) == sorted(created.values())  # each once, none lost
    manual = await query(db_dsn, "SELECT count(*) AS n FROM executions WHERE job_id = $1 AND origin = 'manual'",
                         uuid.UUID(fired))  # fmt: skip
    assert manual[0]["n"] == 120  # every trigger fired once: no retry fired twice
    assert len(target.at("/t")) >= 1


def _drain(c: Cluster, node: str) -> None:
    with c.coordinator() as coord:
        coord.drain(node, "test")


async def _count_at_least(d: dict[str, str], n: int) -> bool:
    return len(d) >= n


def _local_only(value: Any, sink: str) -> Any:
    """A generated body with every URL it could make a node call pointed at the local sink."""
    if isinstance(value, dict):
        out = {k: _local_only(v, sink) for k, v in value.items()}
        for name in ("url", "alert_webhook"):
            if isinstance(out.get(name), str):
                out[name] = sink
        return out
    if isinstance(value, list):
        return [_local_only(v, sink) for v in value]
    return value


def _fuzz(url: str, key: str, sink: str, examples: int) -> list[str]:
    """schemathesis over every operation of /openapi.json: no 5xx, every answer as the document says."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])  # fmt: skip
        @given(operation.as_strategy())
        def run(case: Any) -> None:
            if case.body is not None and not isinstance(case.body, (bytes, str)):
                case.body = _local_only(case.body, sink)
            response = case.call(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance,
                                                     content_type_conformance])  # fmt: skip

        try:
            run()
        except (Exception, BaseExceptionGroup) as e:  # every operation's failures, reported together
            failures.append(f"{operation.label}: {' | '.join(str(e).split(chr(10))[:12])[:1500]}")
    return failures


async def test_generated_requests_get_no_5xx_and_answers_as_documented(
    db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str
) -> None:
    """schemathesis against the API's own OpenAPI document (bounded: a few examples per operation, every URL a
    generated job could call forced to the local sink: no request leaves 127.0.0.1)."""
    admin = await trio.to_thread.run_sync(_key, db_dsn, "fuzz", Role.ADMIN)
    async with target_running() as target, running_cluster(db_dsn, etcd_server, etcd_prefix, "--rate-limit",
                                                           "100000", "--burst", "100000") as url:  # fmt: skip
        failures = await trio.to_thread.run_sync(_fuzz, url, admin, target.url("/fuzz"), 20)
    assert not failures, "\n\n".join(failures)
