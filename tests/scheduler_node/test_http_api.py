"""The node's HTTP port: health, metrics, and the internal write API's answers (auth, 409, 412, 422), every
error as RFC 9457 problem details."""

from __future__ import annotations

import json

import httpx
import msgspec

from protocol.ids import new_job_id
from protocol.internal import JobWrite, JobWriteOp, NotOwner, VersionConflict
from protocol.jobs import JobSpec, Target
from protocol.schedules import Every
from protocol.shards import shard_of

from .harness import SECRET, node_running, node_url, query

SPEC = JobSpec(name="x", schedule=Every("1h"), target=Target(url="http://127.0.0.1:9/x"))


def _id_in(shards: range) -> str:
    while True:
        job_id = new_job_id()
        if shard_of(job_id) in shards:
            return str(job_id)


async def test_health_ready_metrics_and_write_errors(db_dsn: str) -> None:
    async with node_running(db_dsn, shards="0-9") as node:
        base = node_url(node)
        auth = {"authorization": f"Bearer {SECRET}"}
        async with httpx.AsyncClient(base_url=base) as c:
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200
            metrics = (await c.get("/metrics")).text
            assert "# TYPE shardwheel_firings_total counter" in metrics
            assert 'shardwheel_dispatch_lag{quantile="0.99"}' in metrics
            assert "shardwheel_shards_owned 10" in metrics

            mine, other = _id_in(range(0, 10)), _id_in(range(10, 256))
            upsert = msgspec.json.encode(JobWrite(op=JobWriteOp.UPSERT, actor="t", tenant="acme", spec=SPEC))
            assert (await c.post(f"/internal/v1/jobs/{mine}", content=upsert)).status_code == 401
            wrong = {"authorization": "Bearer nope"}
            assert (
                await c.post(f"/internal/v1/jobs/{mine}", content=upsert, headers=wrong)
            ).status_code == 401

            r = await c.post(f"/internal/v1/jobs/{other}", content=upsert, headers=auth)
            assert r.status_code == 409
            assert msgspec.json.decode(r.content, type=NotOwner).shard == shard_of(other)

            r = await c.post(f"/internal/v1/jobs/{mine}", content=upsert, headers=auth)
            assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["created"] is True
            stale = msgspec.json.encode(
                JobWrite(op=JobWriteOp.PAUSE, actor="t", tenant="acme", expected_version=7)
            )
            r = await c.post(f"/internal/v1/jobs/{mine}", content=stale, headers=auth)
            assert r.status_code == 412
            assert msgspec.json.decode(r.content, type=VersionConflict) == VersionConflict(
                expected=7, actual=1
            )

            bad = upsert.replace(b'"every":"1h"', b'"every":"P1M"')
            r = await c.post(f"/internal/v1/jobs/{mine}", content=bad, headers=auth)
            assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
            problem = r.json()
            assert problem["type"] == "urn:shardwheel:problem:invalid-field" and problem["status"] == 422
            assert problem["title"] and problem["detail"].startswith("spec.schedule.every:")
            assert problem["errors"][0]["field"] == "spec.schedule.every"
            assert "calendar duration" in problem["errors"][0]["message"]
            assert (await c.get("/nowhere")).json()["type"] == "urn:shardwheel:problem:not-found"
            empty = {"authorization": "Bearer"}
            assert (await c.post(f"/internal/v1/jobs/{mine}", content=upsert, headers=empty)).status_code == 401
            status = (await c.get("/internal/v1/status", headers=auth)).json()
            assert status["node"] == "node-a" and len(status["shards"]) == 10


async def _field_refused(c: httpx.AsyncClient, job_id: str, body: bytes, field: str) -> None:
    auth = {"authorization": f"Bearer {SECRET}"}
    r = await c.post(f"/internal/v1/jobs/{job_id}", content=body, headers=auth)
    assert r.status_code == 422, (field, r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in r.json()["errors"]] == [field], r.text


async def test_inputs_that_answered_500_are_refused_naming_the_field_and_store_nothing(db_dsn: str) -> None:
    async with node_running(db_dsn, shards="0-255") as node:
        async with httpx.AsyncClient(base_url=node_url(node)) as c:
            job = _id_in(range(256))
            write = msgspec.to_builtins(JobWrite(op=JobWriteOp.UPSERT, actor="t", tenant="acme", spec=SPEC))

            def body(path: str, value: object) -> bytes:
                doc = json.loads(json.dumps(write))
                *parents, last = path.split(".")
                node_ = doc
                for p in parents:
                    node_ = node_[p]
                node_[last] = value
                return json.dumps(doc).encode()

            for path, value, field in [
                ("spec.timezone", "America", "spec.timezone"),
                ("spec.schedule", {"kind": "every", "every": "99999999999999999999d"}, "spec.schedule.every"),
                ("spec.schedule", {"kind": "every", "every": "P99999999999999999999D"}, "spec.schedule.every"),
                ("spec.schedule", {"kind": "at", "at": "9999-12-31T23:30:00-01:00"}, "spec.schedule.at"),
                ("spec.description", "a\u0000b", "spec.description"),
                ("spec.target.body", {"k": "a\u0000b"}, "spec.target.body.k"),
                ("expected_version", 2**63, "expected_version"),
                ("tenant", "ac\u0000me", "tenant"),
                ("tenant", "t" * 200_000, "tenant"),
                ("idempotency_key", "k\u0000", "idempotency_key"),
            ]:
                await _field_refused(c, job, body(path, value), field)
            deep = body("spec.target.body", "x").replace(b'"x"', b"[" * 100_000 + b"]" * 100_000)
            auth = {"authorization": f"Bearer {SECRET}"}
            r = await c.post(f"/internal/v1/jobs/{job}", content=deep, headers=auth)
            assert r.status_code in (413, 422) and r.headers["content-type"] == "application/problem+json"
            await _field_refused(c, "00000000-0000-0000-0000-000000000000", body("tenant", "acme"), "id")
            await _field_refused(c, "not-a-uuid", body("tenant", "acme"), "id")
            write = json.loads(body("tenant", "acme"))
            batch = {"items": [{"job_id": job, "write": write}, {"job_id": "00000000-0000-0000-0000-000000000000",
                                                                 "write": write}]}  # fmt: skip
            r = await c.post("/internal/v1/jobs:batch", json=batch, headers=auth)
            assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["items[1].job_id"], r.text
            # A newer writer's message (a field this version does not know, in the write and in the spec).
            newer = json.loads(body("spec.name", "newer"))
            newer["priority"] = 3
            newer["spec"]["jitter"] = "30s"
            r = await c.post(f"/internal/v1/jobs/{job}", json=newer, headers=auth)
            assert r.status_code == 200 and r.json()["version"] == 1, r.text
    rows = await query(db_dsn, "SELECT spec->>'name' AS name FROM jobs")
    assert [r["name"] for r in rows] == ["newer"]  # nothing of the refused writes was stored


async def test_a_static_shard_another_node_took_is_dropped_and_the_node_says_so(db_dsn: str) -> None:
    """Without a write to be fenced (the shard is idle), the periodic epoch check finds it: the shard leaves
    the node's status and /readyz answers 503 naming it."""
    from scheduler_node.store import bump_epoch

    from .harness import wait_for

    async with node_running(db_dsn, shards="0-9", static_check_interval_s=0.2) as node:
        async with httpx.AsyncClient(base_url=node_url(node)) as c:
            assert (await c.get("/readyz")).status_code == 200
            assert node.engine is not None
            await node.engine.db.call(bump_epoch, 3, "intruder")

            async def dropped() -> bool:
                return (await c.get("/readyz")).status_code == 503

            await wait_for(dropped, timeout=10)
            not_ready = (await c.get("/readyz")).json()
            assert not_ready["detail"] == "shard(s) 3 of --shards taken by another node", not_ready
            status = (await c.get("/internal/v1/status", headers={"authorization": f"Bearer {SECRET}"})).json()
            assert sorted(status["shards"]) == [str(s) for s in (0, 1, 2, 4, 5, 6, 7, 8, 9)]


async def test_internal_targets_are_refused_until_the_cluster_allows_their_network(db_dsn: str) -> None:
    """The egress policy at validation: a literal private address is a 422 naming the field, loopback passes
    in dev mode, and `migrate --allow-target-net` (here its store call) opens a network on the running node."""
    from scheduler_node.store import set_allowed_target_nets

    from .harness import wait_for

    async with node_running(db_dsn, shards="0-255", egress_refresh_s=0.2) as node:
        async with httpx.AsyncClient(base_url=node_url(node)) as c:
            job = _id_in(range(256))

            def upsert(url: str) -> bytes:
                spec = JobSpec(name="x", schedule=Every("1h"), target=Target(url=url))
                return msgspec.json.encode(JobWrite(op=JobWriteOp.UPSERT, actor="t", tenant="acme", spec=spec))

            auth = {"authorization": f"Bearer {SECRET}"}
            for url in ("http://10.1.2.3/hook", "http://169.254.169.254/", "http://[::ffff:10.1.2.3]/"):
                await _field_refused(c, job, upsert(url), "spec.target.url")
            ok = await c.post(f"/internal/v1/jobs/{job}", content=upsert("http://127.0.0.1:9/"), headers=auth)
            assert ok.status_code == 200, ok.text  # dev mode allows loopback
            assert node.engine is not None
            await node.engine.db.call(set_allowed_target_nets, ["10.1.0.0/16"])

            async def allowed() -> bool:
                r = await c.post(f"/internal/v1/jobs/{job}", content=upsert("http://10.1.2.3/hook"), headers=auth)
                return r.status_code == 200

            await wait_for(allowed, timeout=10)
            await _field_refused(c, job, upsert("http://10.2.0.1/"), "spec.target.url")
