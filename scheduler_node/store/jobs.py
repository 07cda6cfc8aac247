"""Jobs: the fenced write path of the owning node, the reads of the API, and the node's loading queries.

Rules:
- Every job write goes through the shard's owner and is one fenced transaction (``write_job``): lock the
  shard's epoch row FOR SHARE (``Fenced`` if it moved on), reserve the Idempotency-Key if one was given
  (``Conflict`` if it was used with another request; a replay returns the stored answer and writes nothing),
  apply the op, append the audit row, store the answer under the key. All or nothing.
- Optimistic concurrency: ``expected_version`` must equal the stored ``version`` or ``VersionMismatch``
  (412) is raised; every change bumps ``version`` by one (no-op pause/resume change nothing). A missing job,
  a deleted one and another tenant's one all read as ``NotFound``: tenants never learn of each other's jobs.
- Ops, as a table (``_OPS``): upsert creates (version 1, active) or replaces the spec (state kept, except
  that a completed or broken job becomes active again); delete is soft (``deleted_at``, state ``deleted``,
  next_fire_at cleared), and a deleted job's id is never used again: an upsert of it is a ``Conflict`` (409),
  any other op ``NotFound``; pause/resume set the state; trigger and backfill change nothing in the job but
  claim their slots (a manual one, or the range's) in the write's own transaction (``write_job_and_claim``):
  an answered trigger is never lost to a node dying between the two. A user's write clears ``state_reason`` (why the
  node set a state).
- ``create_jobs``: many new jobs (ids the API made, no Idempotency-Key) in one fenced statement with their
  audit rows: the path of ``jobs:batch`` and of creates coalesced by the API's router. An id already stored
  (a retried internal request whose first answer was lost) is answered as it is, not written again.
- ``next_fire_at`` is computed by the node (schedule math is not the store's business) and, for a job in no
  node's wheel, is a LOWER BOUND of its true next firing: only a write that bumps the version may lower it;
  ``raise_next_fire_at`` only raises it, and only for the version it was computed from.
- ``due_jobs(shards, until, after=None)``: the active, undeleted jobs of exactly those shards with
  ``after < next_fire_at <= until`` (the ``jobs_due`` index) and their misfire cursors, what a node loads
  when it takes a shard (no ``after``) and as its horizon moves on (one query for all its shards).
- Specs are stored as JSON and read back as text decoded straight into ``JobSpec`` (no semantic re-validation:
  they were validated on the way in). Fields this version does not know are ignored (a newer version wrote
  them). The node's reads (``due_jobs``, ``jobs_by_id``) give an ``UnreadableJob`` for a row that does not
  decode at all, so one such row cannot stop a shard from loading; the node marks it ``broken``.

Example::

    out = await write_job(pool, Fence(7, epoch), job_id,
                          JobWrite(op=JobWriteOp.UPSERT, actor="alice", tenant="acme", spec=spec),
                          next_fire_at=first_slot)
    assert out.created and out.version == 1
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from asyncpg.pgproto.pgproto import UUID as _PgUUID

from protocol.errors import (
    CallerError,
    Conflict,
    InternalError,
    NotFound,
    SpecError,
    VersionMismatch,
)
from protocol.executions import Execution
from protocol.ids import new_job_ids
from protocol.internal import JobWrite, JobWriteOp, JobWritten
from protocol.jobs import Job, JobSpec, JobState

from . import idempotency
from .audit import insert_audit
from .epochs import FENCE_CTE, FENCED_SHARDS_SQL, BatchResult, Fence, fence_arrays, lock_fence
from .executions import EXEC_COLUMNS, ClaimRow, ExecKey, claim_slots
from .pool import Connection, Executor, transaction

__all__ = [
    "UnreadableJob",
    "JobPage",
    "CreatedJobs",
    "JobDetail",
    "JobWriteOutcome",
    "NewJob",
    "NextFire",
    "StateChange",
    "create_jobs",
    "due_jobs",
    "get_job",
    "get_job_detail",
    "job_ids",
    "job_uuid",
    "jobs_by_id",
    "list_jobs",
    "raise_next_fire_at",
    "set_job_state",
    "set_job_states",
    "write_job",
    "write_job_and_claim",
]

_spec_decoder = msgspec.json.Decoder(JobSpec)


def job_uuid(text: str) -> uuid.UUID:
    """A job id as asyncpg's own ``uuid.UUID`` subclass, the type rows come back with: hashed in C and once
    (the stdlib's ``__hash__`` is Python, and the node hashes a job's id ~10 times per firing in its dicts),
    and encoded from its bytes without a Python call. Equal, and equally hashed, to the stdlib's."""
    made: uuid.UUID = _PgUUID(text)
    return made

JOB_COLUMNS = (
    "shard, id, tenant, spec::text AS spec, state, state_reason, version, next_fire_at, created_at,"
    " updated_at"
)


class UnreadableJob(msgspec.Struct, frozen=True):
    """A stored job whose spec this version cannot decode (what the node marks ``broken``)."""

    shard: int
    id: uuid.UUID
    tenant: str
    version: int
    reason: str


class JobWriteOutcome(msgspec.Struct, frozen=True):
    """What a job write did. ``replayed``: an Idempotency-Key replay, the stored outcome of the first request
    (whose ``job_id`` may differ from this request's, as a retried create carries a new id)."""

    job_id: uuid.UUID
    version: int
    state: JobState
    next_fire_at: datetime | None = None
    created: bool = False
    replayed: bool = False
    slots: int | None = None  # trigger and backfill: the slots the write fires

    def written(self) -> JobWritten:
        return JobWritten(version=self.version, state=self.state, next_fire_at=self.next_fire_at,
                          created=self.created, job_id=str(self.job_id), slots=self.slots)  # fmt: skip


class JobPage(msgspec.Struct, frozen=True):
    items: list[Job]
    next_after: uuid.UUID | None  # pass as ``after`` for the next page; None on the last page


class NextFire(msgspec.Struct, frozen=True, gc=False):
    """A computed next firing for ``raise_next_fire_at``; ``version`` is the job version it was computed from."""

    shard: int
    epoch: int
    job_id: uuid.UUID
    version: int
    next_fire_at: datetime | None  # None: the job never fires again


def _job(r: asyncpg.Record, spec: JobSpec | None = None) -> Job:
    return Job(
        id=str(r["id"]), tenant=r["tenant"], spec=spec or _spec_decoder.decode(r["spec"]), state=JobState(r["state"]),
        version=r["version"], shard=r["shard"], created_at=r["created_at"], updated_at=r["updated_at"],
        next_fire_at=r["next_fire_at"], state_reason=r["state_reason"],
    )  # fmt: skip


def _job_or_unreadable(r: asyncpg.Record) -> Job | UnreadableJob:
    try:
        return _job(r)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as e:
        reason = f"stored spec does not decode: {e}"
        return UnreadableJob(r["shard"], r["id"], r["tenant"], r["version"], reason)


def _outcome(job_id: uuid.UUID, r: asyncpg.Record, *, created: bool = False) -> JobWriteOutcome:
    return JobWriteOutcome(job_id=job_id, version=r["version"], state=JobState(r["state"]),
                           next_fire_at=r["next_fire_at"], created=created)  # fmt: skip


async def _refuse(conn: Connection, shard: int, job_id: uuid.UUID, tenant: str, expected: int | None) -> None:
    """An update matched no row: say why (NotFound or VersionMismatch)."""
    actual = await conn.fetchval(
        "SELECT version FROM jobs WHERE shard = $1 AND id = $2 AND tenant = $3 AND deleted_at IS NULL",
        shard, job_id, tenant,
    )  # fmt: skip
    if actual is None:
        raise NotFound(f"job {job_id} not found")
    assert expected is not None, "an update without expected_version only misses a missing job"
    raise VersionMismatch(expected, actual)


_RETURNING = "RETURNING version, state, next_fire_at"
_MATCH = (
    "shard = $1 AND id = $2 AND tenant = $3 AND deleted_at IS NULL AND ($4::bigint IS NULL OR version = $4)"
)


async def _refuse_upsert(conn: Connection, shard: int, job_id: uuid.UUID, w: JobWrite) -> None:
    deleted = await conn.fetchval(
        "SELECT deleted_at IS NOT NULL FROM jobs WHERE shard = $1 AND id = $2 AND tenant = $3",
        shard, job_id, w.tenant,
    )  # fmt: skip
    if deleted:
        raise Conflict(f"job {job_id} was deleted; the id of a deleted job cannot be used again")
    await _refuse(conn, shard, job_id, w.tenant, w.expected_version)


async def _upsert(conn: Connection, shard: int, job_id: uuid.UUID, w: JobWrite,
                  next_fire_at: datetime | None) -> JobWriteOutcome:  # fmt: skip
    if w.spec is None:
        raise SpecError("spec", "required for an upsert")
    spec = w.spec
    values = (
        spec.name,
        list(spec.tags),
        msgspec.json.encode(spec).decode(),
        spec.semantics.value,
        next_fire_at,
    )
    if w.expected_version is None:
        row = await conn.fetchrow(
            "INSERT INTO jobs (shard, id, tenant, name, tags, spec, semantics, next_fire_at, state)"
            " VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, 'active')"
            f" ON CONFLICT (shard, id) DO NOTHING {_RETURNING}",
            shard, job_id, w.tenant, *values,
        )  # fmt: skip
        if row is not None:
            return _outcome(job_id, row, created=True)
    row = await conn.fetchrow(
        "UPDATE jobs SET name = $5, tags = $6, spec = $7::text::jsonb, semantics = $8, next_fire_at = $9,"
        " state = CASE WHEN state IN ('completed', 'broken') THEN 'active' ELSE state END,"
        " state_reason = NULL,"
        f" version = version + 1, updated_at = now() WHERE {_MATCH} {_RETURNING}",
        shard, job_id, w.tenant, w.expected_version, *values,
    )  # fmt: skip
    if row is None:
        await _refuse_upsert(conn, shard, job_id, w)
    return _outcome(job_id, row)


async def _delete(conn: Connection, shard: int, job_id: uuid.UUID, w: JobWrite,
                  next_fire_at: datetime | None) -> JobWriteOutcome:  # fmt: skip
    row = await conn.fetchrow(
        "UPDATE jobs SET deleted_at = now(), state = 'deleted', state_reason = NULL, next_fire_at = NULL,"
        f" version = version + 1, updated_at = now() WHERE {_MATCH} {_RETURNING}",
        shard, job_id, w.tenant, w.expected_version,
    )  # fmt: skip
    if row is None:
        await _refuse(conn, shard, job_id, w.tenant, w.expected_version)
    return _outcome(job_id, row)


async def _set_state(conn: Connection, shard: int, job_id: uuid.UUID, tenant: str, expected: int | None,
                     state: JobState, next_fire_at: datetime | None, reason: str | None = None,
                     ) -> JobWriteOutcome:  # fmt: skip
    # A no-op (already in that state) changes nothing, so an idempotent pause does not invalidate ETags.
    # next_fire_at is replaced only when the job becomes active (the node computed it for that).
    row = await conn.fetchrow(
        "UPDATE jobs SET state = $5,"
        " next_fire_at = CASE WHEN $5 = 'active' AND state <> 'active' THEN $6 ELSE next_fire_at END,"
        " version = version + (state <> $5)::int,"
        " state_reason = CASE WHEN state <> $5 THEN $7 ELSE state_reason END,"
        " updated_at = CASE WHEN state <> $5 THEN now() ELSE updated_at END"
        f" WHERE {_MATCH} {_RETURNING}",
        shard, job_id, tenant, expected, state.value, next_fire_at, reason,
    )  # fmt: skip
    if row is None:
        await _refuse(conn, shard, job_id, tenant, expected)
    return _outcome(job_id, row)


async def _pause(conn: Connection, shard: int, job_id: uuid.UUID, w: JobWrite,
                 next_fire_at: datetime | None) -> JobWriteOutcome:  # fmt: skip
    return await _set_state(conn, shard, job_id, w.tenant, w.expected_version, JobState.PAUSED, None)


async def _resume(conn: Connection, shard: int, job_id: uuid.UUID, w: JobWrite,
                  next_fire_at: datetime | None) -> JobWriteOutcome:  # fmt: skip
    return await _set_state(conn, shard, job_id, w.tenant, w.expected_version, JobState.ACTIVE, next_fire_at)


async def _trigger(conn: Connection, shard: int, job_id: uuid.UUID, w: JobWrite,
                   next_fire_at: datetime | None) -> JobWriteOutcome:  # fmt: skip
    row = await conn.fetchrow(
        f"SELECT version, state, next_fire_at FROM jobs WHERE {_MATCH} FOR SHARE",
        shard, job_id, w.tenant, w.expected_version,
    )  # fmt: skip
    if row is None:
        await _refuse(conn, shard, job_id, w.tenant, w.expected_version)
    return _outcome(job_id, row)


_Op = Callable[[Connection, int, uuid.UUID, JobWrite, "datetime | None"], Awaitable[JobWriteOutcome]]
_OPS: dict[JobWriteOp, _Op] = {
    JobWriteOp.UPSERT: _upsert,
    JobWriteOp.DELETE: _delete,
    JobWriteOp.PAUSE: _pause,
    JobWriteOp.RESUME: _resume,
    JobWriteOp.TRIGGER: _trigger,
    JobWriteOp.BACKFILL: _trigger,  # checked and audited; the node claims the range's slots
}
_outcome_decoder = msgspec.json.Decoder(JobWriteOutcome)


async def write_job(
    db: Executor,
    fence: Fence,
    job_id: uuid.UUID,
    write: JobWrite,
    *,
    next_fire_at: datetime | None = None,
    idempotency_ttl: timedelta = idempotency.DEFAULT_TTL,
) -> JobWriteOutcome:
    """Apply one ``JobWrite`` for the owner of ``fence.shard`` in one fenced transaction (see the module rules).

    ``next_fire_at``: the job's next firing as the node computed it, for upsert and resume.
    Raises ``Fenced``, ``NotFound``, ``VersionMismatch``, ``Conflict``, ``KeyReused``, ``SpecError``.
    """
    async with transaction(db) as conn:
        outcome, _ = await _write_job(conn, fence, job_id, write, next_fire_at, (), "", idempotency_ttl)
        return outcome


async def write_job_and_claim(
    db: Executor,
    fence: Fence,
    job_id: uuid.UUID,
    write: JobWrite,
    *,
    claims: Sequence[ClaimRow],
    node: str,
    idempotency_ttl: timedelta = idempotency.DEFAULT_TTL,
) -> tuple[JobWriteOutcome, list[ExecKey]]:
    """A trigger or a backfill and the claims of its slots, in one fenced transaction: a write that committed
    has its slots claimed (a node dying after the commit leaves them to the takeover, never forgotten), and
    an Idempotency-Key replay claims nothing. Returns the outcome (``slots``: how many the write fires) and
    the keys inserted now, for the node to send."""
    async with transaction(db) as conn:
        return await _write_job(conn, fence, job_id, write, None, claims, node, idempotency_ttl)


async def _write_job(
    conn: Connection, fence: Fence, job_id: uuid.UUID, write: JobWrite, next_fire_at: datetime | None,
    claims: Sequence[ClaimRow], node: str, idempotency_ttl: timedelta,
) -> tuple[JobWriteOutcome, list[ExecKey]]:  # fmt: skip
    shard = fence.shard
    await lock_fence(conn, fence)
    key = write.idempotency_key
    if key is not None:
        r = await idempotency.reserve(
            conn, tenant=write.tenant, key=key, job_id=job_id, shard=shard,
            request_hash=write.request_hash or "", ttl=idempotency_ttl,
        )  # fmt: skip
        if not r.fresh:
            if r.response is None:  # cannot happen: the response is stored in the reserving transaction
                raise InternalError(f"Idempotency-Key '{key}' has no stored response")
            return msgspec.structs.replace(_outcome_decoder.decode(r.response), replayed=True), []
    outcome = await _OPS[write.op](conn, shard, job_id, write, next_fire_at)
    detail: dict[str, Any] = {"version": outcome.version}
    claimed: list[ExecKey] = []
    if write.op in (JobWriteOp.TRIGGER, JobWriteOp.BACKFILL):
        claimed = (await claim_slots(conn, node, claims)).applied if claims else []
        outcome = msgspec.structs.replace(outcome, slots=len(claims))
        detail["slots"] = len(claims)
    if write.backfill is not None:
        detail |= {"from": write.backfill.start.isoformat(), "to": write.backfill.end.isoformat()}
    if write.expected_version is not None:
        detail["expected_version"] = write.expected_version
    if outcome.created:
        detail["created"] = True
    if key is not None:
        detail["idempotency_key"] = key
    await insert_audit(conn, shard=shard, tenant=write.tenant, actor=write.actor, action=f"job.{write.op.value}",
                       job_id=job_id, detail=detail)  # fmt: skip
    if key is not None:
        await idempotency.record_response(
            conn, tenant=write.tenant, key=key, response_json=msgspec.json.encode(outcome).decode()
        )
    return outcome, claimed


class NewJob(msgspec.Struct, frozen=True):
    shard: int
    epoch: int  # the writer's: a shard taken over since writes nothing
    job_id: uuid.UUID
    tenant: str
    actor: str
    spec: JobSpec
    next_fire_at: datetime  # a lower bound of its first slot, as the node computed it


class CreatedJobs(msgspec.Struct, frozen=True):
    created: list[Job]  # inserted by this call
    existing: dict[uuid.UUID, JobWriteOutcome]  # stored before (a retried create): answered as they are
    refused: dict[uuid.UUID, CallerError]  # the id is another tenant's or a deleted job's
    fenced: frozenset[int]  # shards no longer the writer's: their rows were not written


_CREATE_SQL = f"""
WITH {FENCE_CTE},
input AS (
    SELECT * FROM unnest($3::int[], $4::uuid[], $5::text[], $6::text[], $7::jsonb[], $8::uuid[], $9::timestamptz[])
        AS t(shard, id, tenant, actor, spec, audit_id, next_fire_at)
),
ins AS (
    INSERT INTO jobs AS j (shard, id, tenant, name, tags, spec, semantics, next_fire_at, state)
    SELECT i.shard, i.id, i.tenant, i.spec ->> 'name', ARRAY(SELECT jsonb_array_elements_text(i.spec -> 'tags')),
           i.spec, i.spec ->> 'semantics', i.next_fire_at, 'active'
    FROM input i JOIN fence f ON f.shard = i.shard
    ORDER BY i.shard, i.id
    ON CONFLICT (shard, id) DO NOTHING
    RETURNING {JOB_COLUMNS.replace("spec::text AS spec", "NULL::text AS spec")}
),
audit AS (
    INSERT INTO audit_log (shard, id, tenant, actor, action, job_id, detail)
    SELECT ins.shard, i.audit_id, ins.tenant, i.actor, 'job.upsert', ins.id, '{{"version": 1, "created": true}}'
    FROM ins JOIN input i ON i.shard = ins.shard AND i.id = ins.id
)
SELECT ins.*, NULL::int AS fenced_shard FROM ins
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, s FROM ({FENCED_SHARDS_SQL}) fenced
"""


async def create_jobs(db: Executor, rows: Sequence[NewJob]) -> CreatedJobs:
    """Insert new jobs in one fenced statement (see the module rules)."""
    if not rows:
        return CreatedJobs([], {}, {}, frozenset())
    shards, epochs = fence_arrays((r.shard, r.epoch) for r in rows)
    records = await db.fetch(
        _CREATE_SQL, shards, epochs, [r.shard for r in rows], [r.job_id for r in rows], [r.tenant for r in rows],
        [r.actor for r in rows], [r.spec for r in rows],
        new_job_ids(len(rows)), [r.next_fire_at for r in rows],
    )  # fmt: skip
    fenced = frozenset(r["fenced_shard"] for r in records if r["fenced_shard"] is not None)
    specs = {r.job_id: r.spec for r in rows}
    created = [_job(r, specs[r["id"]]) for r in records if r["fenced_shard"] is None]
    inserted = {uuid.UUID(j.id) for j in created}
    others = [r for r in rows if r.job_id not in inserted and r.shard not in fenced]
    existing: dict[uuid.UUID, JobWriteOutcome] = {}
    refused: dict[uuid.UUID, CallerError] = {}
    if others:
        found = await db.fetch(
            "SELECT id, tenant, version, state, next_fire_at, deleted_at IS NOT NULL AS deleted FROM jobs"
            " WHERE (shard, id) IN (SELECT * FROM unnest($1::int[], $2::uuid[]))",
            [r.shard for r in others], [r.job_id for r in others],
        )  # fmt: skip
        by_id = {f["id"]: f for f in found}
        for r in others:
            f = by_id.get(r.job_id)
            if f is None or f["tenant"] != r.tenant:
                refused[r.job_id] = Conflict(f"job id {r.job_id} is taken")
            elif f["deleted"]:
                refused[r.job_id] = Conflict(f"job {r.job_id} was deleted; the id of a deleted job cannot be "
                                             "used again")  # fmt: skip
            else:
                existing[r.job_id] = _outcome(r.job_id, f)
    return CreatedJobs(created, existing, refused, fenced)


async def set_job_state(
    db: Executor,
    fence: Fence,
    job_id: uuid.UUID,
    state: JobState,
    *,
    tenant: str,
    actor: str = "system",
    reason: str = "",
    next_fire_at: datetime | None = None,
    expected_version: int | None = None,
) -> JobWriteOutcome:
    """A state change decided by the node itself (auto_paused after failures, completed after the last slot,
    broken), fenced and audited like a user's write. ``expected_version``: only if no write came since
    (``VersionMismatch`` otherwise): a job found broken and written again meanwhile is not broken."""
    async with transaction(db) as conn:
        await lock_fence(conn, fence)
        outcome = await _set_state(
            conn, fence.shard, job_id, tenant, expected_version, state, next_fire_at, reason or None
        )
        await insert_audit(conn, shard=fence.shard, tenant=tenant, actor=actor, action=f"job.state.{state.value}",
                           job_id=job_id, detail={"version": outcome.version, "reason": reason})  # fmt: skip
        return outcome


class StateChange(msgspec.Struct, frozen=True):
    """A state the node decided for a job (``completed``, ``auto_paused``), for ``set_job_states``."""

    shard: int
    epoch: int
    job_id: uuid.UUID
    tenant: str
    state: JobState
    reason: str


_STATES_SQL = f"""
WITH {FENCE_CTE},
input AS (
    SELECT * FROM unnest($3::int[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::uuid[])
        WITH ORDINALITY AS t(shard, job_id, tenant, state, reason, audit_id, ord)
),
latest AS (  -- the last change of each job in batch order
    SELECT DISTINCT ON (shard, job_id) * FROM input ORDER BY shard, job_id, ord DESC
),
upd AS (
    UPDATE jobs j SET state = l.state, version = j.version + 1, state_reason = l.reason, updated_at = now()
    FROM latest l JOIN fence f ON f.shard = l.shard
    WHERE j.shard = l.shard AND j.id = l.job_id AND j.tenant = l.tenant AND j.deleted_at IS NULL
      AND j.state <> l.state
    RETURNING j.shard, j.id, j.tenant, j.version, j.state, l.reason, l.audit_id
),
audited AS (
    INSERT INTO audit_log (shard, id, tenant, actor, action, job_id, detail)
    SELECT shard, audit_id, tenant, 'system', 'job.state.' || state, id,
           jsonb_build_object('version', version, 'reason', reason)
    FROM upd
)
SELECT shard, id AS job_id, version FROM upd
UNION ALL
SELECT s, NULL, NULL FROM ({FENCED_SHARDS_SQL}) fenced
"""


async def set_job_states(db: Executor, changes: Sequence[StateChange]) -> BatchResult[tuple[uuid.UUID, int]]:
    """States the node decided, in one fenced statement, each audited as ``set_job_state`` does; ``applied``:
    (job id, new version) of the jobs changed. A job already in its state, deleted or another tenant's is left
    as it is; so is every job of a fenced shard (``fenced``).

    Completions come in herds (every ``at`` job of one second, every job whose ``end_at`` passed): a statement
    per job queued thousands of round trips ahead of the next claims."""
    if not changes:
        return BatchResult(applied=[], conflicts=[], fenced=frozenset())
    shards, epochs = fence_arrays((c.shard, c.epoch) for c in changes)
    records = await db.fetch(
        _STATES_SQL, shards, epochs, [c.shard for c in changes], [c.job_id for c in changes],
        [c.tenant for c in changes], [c.state.value for c in changes], [c.reason or None for c in changes],
        new_job_ids(len(changes)),
    )  # fmt: skip
    applied = [(r["job_id"], r["version"]) for r in records if r["job_id"] is not None]
    return BatchResult(applied=applied, conflicts=[],
                       fenced=frozenset(r["shard"] for r in records if r["job_id"] is None))  # fmt: skip


class JobDetail(msgspec.Struct, frozen=True):
    job: Job
    last_slot: datetime | None  # job_cursor.last_slot: the newest scheduled slot claimed
    last_result: Execution | None  # the newest execution that ended


_DETAIL_SQL = f"""
SELECT {", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(","))}, c.last_slot, to_jsonb(e)::text AS last_result
FROM jobs j
LEFT JOIN job_cursor c ON c.shard = j.shard AND c.job_id = j.id
LEFT JOIN LATERAL (
    SELECT {EXEC_COLUMNS} FROM executions x
    WHERE x.shard = j.shard AND x.job_id = j.id AND x.status NOT IN ('claimed', 'retry_wait')
    ORDER BY x.scheduled_at DESC LIMIT 1
) e ON true
WHERE j.shard = $1 AND j.id = $2 AND j.tenant = $3 AND j.deleted_at IS NULL
"""


async def get_job_detail(db: Executor, shard: int, job_id: uuid.UUID, *, tenant: str) -> JobDetail:
    """A job with its scheduled-slot cursor and its last result, in one statement; ``NotFound`` as ``get_job``."""
    row = await db.fetchrow(_DETAIL_SQL, shard, job_id, tenant)
    if row is None:
        raise NotFound(f"job {job_id} not found")
    job = _job(row)
    last = row["last_result"]
    result = None
    if last is not None:
        result = msgspec.convert(msgspec.json.decode(last), Execution, strict=False)
    return JobDetail(job, row["last_slot"], result)


async def get_job(
    db: Executor, shard: int, job_id: uuid.UUID, *, tenant: str | None = None, include_deleted: bool = False
) -> Job:
    """One job; ``NotFound`` if absent, deleted (unless ``include_deleted``) or another tenant's."""
    row = await db.fetchrow(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE shard = $1 AND id = $2"
        " AND ($3::text IS NULL OR tenant = $3) AND ($4 OR deleted_at IS NULL)",
        shard, job_id, tenant, include_deleted,
    )  # fmt: skip
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return _job(row)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def job_ids(db: Executor, *, tenant: str, tag: str, limit: int) -> list[uuid.UUID]:
    """The ids of a tenant's undeleted jobs with ``tag``, oldest first, at most ``limit``."""
    rows = await db.fetch(
        "SELECT id FROM jobs WHERE tenant = $1 AND tags @> ARRAY[$2::text] AND deleted_at IS NULL"
        " ORDER BY id LIMIT $3",
        tenant, tag, limit,
    )  # fmt: skip
    return [r["id"] for r in rows]


async def list_jobs(
    db: Executor,
    *,
    tenant: str | None,
    tag: str | None = None,
    state: JobState | None = None,
    name_contains: str | None = None,
    after: uuid.UUID | None = None,
    limit: int = 100,
) -> JobPage:
    """Undeleted jobs in id order (UUIDv7: creation order), filtered; ``tenant=None`` lists every tenant (admin).

    Only the filters given appear in the SQL, so each combination gets a plan that uses its index
    (``jobs_tenant_id`` for tenant + cursor, ``jobs_tags`` for a tag) rather than one generic plan.
    """
    if not 1 <= limit <= 1000:
        raise SpecError("limit", "must be 1-1000")
    where = ["deleted_at IS NULL"]
    args: list[Any] = []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        where.append(sql.format(f"${len(args)}"))

    if tenant is not None:
        add("tenant = {}", tenant)
    if tag is not None:
        add("tags @> ARRAY[{}::text]", tag)
    if state is not None:
        add("state = {}", state.value)
    if name_contains:
        add("name ILIKE '%' || {} || '%'", _like_escape(name_contains))
    if after is not None:
        add("id > {}", after)
    args.append(limit + 1)
    sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY id LIMIT ${len(args)}"
    if tag is not None:
        rows = await db.fetch(sql, *args)
    else:
        # Without a tag the only good plan walks jobs_tenant_id in id order and stops at the limit. When the
        # statistics underestimate a tenant (a new tenant's bulk import, a table not analysed yet) the planner
        # prefers a bitmap scan that reads every job of the tenant and sorts them: 0.8 s for 200,000 jobs, per
        # request. Bitmap scans are off for this statement only.
        async with transaction(db) as conn:
            await conn.execute("SET LOCAL enable_bitmapscan = off")
            rows = await conn.fetch(sql, *args)
    items = [_job(r) for r in rows[:limit]]
    more = len(rows) > limit
    return JobPage(items=items, next_after=uuid.UUID(items[-1].id) if more else None)


async def due_jobs(
    db: Executor, shards: Sequence[int], until: datetime, *, after: datetime | None = None
) -> list[tuple[Job | UnreadableJob, datetime | None]]:
    """The active, undeleted jobs of ``shards`` whose ``after < next_fire_at <= until``, by shard and next_fire_at,
    each with its ``job_cursor.last_slot`` (the misfire baseline), in one statement.

    ``after`` serves the node's refill: only the jobs that entered the horizon since its last look.
    """
    rows = await db.fetch(
        f"SELECT {JOB_COLUMNS}, (SELECT c.last_slot FROM job_cursor c WHERE c.shard = jobs.shard"
        " AND c.job_id = jobs.id) AS last_slot FROM jobs WHERE shard = ANY($1::int[]) AND state = 'active'"
        " AND deleted_at IS NULL AND next_fire_at <= $2 AND ($3::timestamptz IS NULL OR next_fire_at > $3)"
        " ORDER BY shard, next_fire_at, id",
        list(shards), until, after,
    )  # fmt: skip
    return [(_job_or_unreadable(r), r["last_slot"]) for r in rows]


async def jobs_by_id(db: Executor, shard: int, ids: Sequence[uuid.UUID]) -> list[Job | UnreadableJob]:
    """The undeleted jobs of ``shard`` among ``ids``, any tenant, as the node reloads them after a write."""
    rows = await db.fetch(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE shard = $1 AND id = ANY($2::uuid[]) AND deleted_at IS NULL"
        " ORDER BY id",
        shard, list(ids),
    )  # fmt: skip
    return [_job_or_unreadable(r) for r in rows]


_RAISE_SQL = f"""
WITH {FENCE_CTE},
input AS (
    SELECT * FROM unnest($3::int[], $4::uuid[], $5::bigint[], $6::timestamptz[])
        AS t(shard, job_id, version, next_fire_at)
),
upd AS (
    UPDATE jobs j SET next_fire_at = CASE WHEN i.next_fire_at IS NULL THEN NULL
                                          ELSE greatest(j.next_fire_at, i.next_fire_at) END
    FROM input i JOIN fence f ON f.shard = i.shard
    WHERE j.shard = i.shard AND j.id = i.job_id AND j.version = i.version AND j.deleted_at IS NULL
      AND j.next_fire_at IS DISTINCT FROM (CASE WHEN i.next_fire_at IS NULL THEN NULL
                                                ELSE greatest(j.next_fire_at, i.next_fire_at) END)
    RETURNING j.shard, j.id
)
SELECT shard, id FROM upd
UNION ALL
SELECT s, NULL FROM ({FENCED_SHARDS_SQL}) fenced
"""


async def raise_next_fire_at(db: Executor, rows: Sequence[NextFire]) -> BatchResult[uuid.UUID]:
    """Raise the stored lower bound of jobs whose next slot lies beyond the node's horizon; one fenced statement.

    A row applies only if the job still has ``version`` (a concurrent spec change may have made the computed
    slot wrong) and only upwards. ``conflicts``: rows that did not apply (other version, deleted, or already
    at least that high).
    """
    if not rows:
        return BatchResult(applied=[], conflicts=[], fenced=frozenset())
    shards, epochs = fence_arrays((r.shard, r.epoch) for r in rows)
    records = await db.fetch(
        _RAISE_SQL, shards, epochs,
        [r.shard for r in rows], [r.job_id for r in rows], [r.version for r in rows], [r.next_fire_at for r in rows],
    )  # fmt: skip
    applied = [r["id"] for r in records if r["id"] is not None]
    fenced = frozenset(r["shard"] for r in records if r["id"] is None)
    done = set(applied)
    conflicts = [r.job_id for r in rows if r.shard not in fenced and r.job_id not in done]
    return BatchResult(applied=applied, conflicts=conflicts, fenced=fenced)
