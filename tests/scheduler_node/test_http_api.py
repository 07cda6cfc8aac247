"""The node's HTTP port: health, metrics, and the internal write API's answers (auth, 409, 412, 422)."""

from __future__ import annotations

import httpx
import msgspec

from protocol.ids import new_job_id
from protocol.internal import JobWrite, JobWriteOp, NotOwner, VersionConflict
from protocol.jobs import JobSpec, Target
from protocol.schedules import Every
from protocol.shards import shard_of

from .harness import SECRET, node_running, node_url

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
            assert r.status_code == 422 and r.json()["error"].startswith("schedule.every:")
            r = await c.post(f"/internal/v1/jobs/{mine}", content=b"{", headers=auth)
            assert r.status_code == 422
            r = await c.post(
                "/internal/v1/jobs/not-a-uuid-at-all-really-not-0000", content=upsert, headers=auth
            )
            assert r.status_code in (400, 404)
            assert (await c.get("/nowhere")).status_code == 404
            status = (await c.get("/internal/v1/status", headers=auth)).json()
            assert status["node"] == "node-a" and len(status["shards"]) == 10
