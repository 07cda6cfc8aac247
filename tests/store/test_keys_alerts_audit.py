"""API keys (hashed, revocable), alerts (fenced, deduplicated, delivery bookkeeping), the audit log."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from protocol.errors import SpecError
from protocol.executions import Origin
from scheduler_node.store import (
    CLUSTER_SHARD,
    AlertRow,
    Role,
    create_api_key,
    insert_alerts,
    insert_audit,
    list_alerts,
    list_api_keys,
    list_audit,
    lookup_api_key,
    mark_delivered,
    pending_deliveries,
    record_delivery_failure,
    revoke_api_key,
)
from scheduler_node.store.idempotency import purge_expired
from scheduler_node.trio_store import TrioStore

from .conftest import T0, job_in_shard, own


async def test_keys_are_stored_hashed_looked_up_and_revoked(store: TrioStore) -> None:
    secret, key = await store.call(create_api_key, tenant="acme", role=Role.WRITER, name="ci", actor="root",
                                   rate_limit_per_s=5.0, burst=10)  # fmt: skip
    assert secret.startswith("sw_") and len(secret) >= 46 and key.prefix == secret[:10]
    stored = await store.run(store.pool.fetchrow, "SELECT * FROM api_keys WHERE id = $1", key.id)
    assert stored["key_hash"] == hashlib.sha256(secret.encode()).digest()
    assert secret not in {str(v) for v in stored.values()}  # the secret itself is nowhere
    found = await store.call(lookup_api_key, secret)
    assert found == key and (found.role, found.rate_limit_per_s, found.burst) == (Role.WRITER, 5.0, 10)
    assert await store.call(lookup_api_key, secret + "x") is None
    _, reader = await store.call(create_api_key, tenant="globex", role=Role.READER)
    assert [k.id for k in await store.call(list_api_keys, tenant="acme")] == [key.id]
    assert len(await store.call(list_api_keys)) == 2

    assert not await store.call(revoke_api_key, key.id, tenant="globex")  # not that tenant's key
    assert await store.call(revoke_api_key, key.id, actor="root")
    assert not await store.call(revoke_api_key, key.id)  # already revoked
    assert await store.call(lookup_api_key, secret) is None
    assert await store.call(list_api_keys, tenant="acme") == []
    assert len(await store.call(list_api_keys, tenant="acme", include_revoked=True)) == 1
    actions = [e.action for e in await store.call(list_audit, shard=CLUSTER_SHARD)]
    assert actions == ["api_key.revoke", "api_key.create", "api_key.create"]

    fixed = "sw_" + "d" * 43
    assert (await store.call(create_api_key, tenant="dev", role=Role.ADMIN, key=fixed))[0] == fixed
    assert (await store.call(lookup_api_key, fixed)).tenant == "dev"
    with pytest.raises(SpecError):
        await store.call(create_api_key, tenant="dev", role=Role.ADMIN, key="short")
    assert reader.role == Role.READER


async def test_alerts_are_fenced_deduplicated_and_delivered(store: TrioStore) -> None:
    f = await own(store, 60)
    job = job_in_shard(60)
    row = AlertRow(60, f.epoch, job, "acme", T0, Origin.SCHEDULED, "execution_failed", "HTTP 500 after 3 attempts",
                   webhook="https://alerts.example.com/hook", payload={"http_status": 500})  # fmt: skip
    quiet = AlertRow(
        60, f.epoch, job, "acme", T0 + timedelta(seconds=1), Origin.SCHEDULED, "execution_failed", "x"
    )
    r = await store.call(insert_alerts, [row, quiet])
    assert len(r.applied) == 2 and not r.conflicts
    again = await store.call(insert_alerts, [row])  # a retried batch raises nothing twice
    assert again.applied == [] and again.conflicts == [row.key()]

    listed = await store.call(list_alerts, tenant="acme")
    assert [a.id for a in listed] == sorted((a.id for a in listed), reverse=True)  # newest (UUIDv7) first
    listed.sort(key=lambda a: a.webhook is None)  # the one with a webhook first
    assert listed[0].payload == {"http_status": 500} and listed[0].origin == Origin.SCHEDULED
    assert await store.call(list_alerts, tenant="globex") == []
    due = await store.call(pending_deliveries, [60], T0 + timedelta(days=3650))
    assert [a.id for a in due] == [listed[0].id]  # the one without a webhook is never delivered
    retry_at = T0 + timedelta(days=3650)
    assert await store.call(record_delivery_failure, 60, due[0].id, "connection refused", retry_at)
    assert await store.call(pending_deliveries, [60], retry_at - timedelta(seconds=1)) == []
    [pending] = await store.call(pending_deliveries, [60], retry_at)
    assert (pending.delivery_attempts, pending.last_error) == (1, "connection refused")
    assert await store.call(mark_delivered, 60, pending.id)
    assert not await store.call(mark_delivered, 60, pending.id)
    assert await store.call(pending_deliveries, [60], retry_at) == []
    [delivered] = [a for a in await store.call(list_alerts, tenant="acme") if a.webhook is not None]
    assert delivered.delivered_at is not None and delivered.delivery_attempts == 2
    assert len(await store.call(list_alerts, undelivered=True)) == 0
    newest, oldest = sorted((a.id for a in listed), reverse=True)
    assert [a.id for a in await store.call(list_alerts, before=newest)] == [oldest]


async def test_audit_lists_newest_first(store: TrioStore) -> None:
    job = job_in_shard(61)
    for i in range(3):
        await store.call(insert_audit, shard=61, tenant="acme", actor="bob", action=f"a{i}", job_id=job,
                         detail={"i": i})  # fmt: skip
    await store.call(insert_audit, shard=62, tenant="globex", actor="eve", action="x")
    entries = await store.call(list_audit, tenant="acme")
    assert [(e.action, e.detail) for e in entries] == [("a2", {"i": 2}), ("a1", {"i": 1}), ("a0", {"i": 0})]
    assert len(await store.call(list_audit, shard=61, job_id=job, limit=2)) == 2
    assert len(await store.call(list_audit)) == 4
    with pytest.raises(ValueError, match="needs the job's shard"):
        await store.call(list_audit, job_id=job)


async def test_purge_expired_idempotency_records(store: TrioStore) -> None:
    await store.run(store.pool.execute, """
        INSERT INTO idempotency (tenant, key, job_id, shard, request_hash, expires_at)
        SELECT 'acme', 'k' || i, gen_random_uuid(), 0, 'h', now() + (CASE WHEN i % 2 = 0 THEN -1 ELSE 1 END) * interval '1 h'
        FROM generate_series(1, 10) i""")  # fmt: skip
    assert await store.call(purge_expired, limit=3) == 3
    assert await store.call(purge_expired) == 2
    assert await store.run(store.pool.fetchval, "SELECT count(*) FROM idempotency") == 5
