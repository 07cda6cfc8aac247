"""An in-memory stand-in for the store the engine uses, so engine tests run on virtual time in milliseconds.

``MemoryStore.call(fn, *args)`` answers what ``TrioStore.call(fn, *args)`` would: it dispatches on the store
function's name to a method of the same name and signature (minus the pool) that keeps PostgreSQL's rows as
plain records. Fencing, ``ON CONFLICT``, cursors and the takeover rules follow ``store/executions.py`` and
``store/jobs.py`` as documented there; ``tests/store/test_memory_store_agreement.py`` runs the same operation
sequences on both and compares, so this model cannot drift from the SQL unnoticed.

Faults: ``fail(n)`` makes the next n calls raise ``DatabaseUnavailable``, ``down_for(s)`` every call for the
next s seconds of trio's clock (PostgreSQL away), ``hold()`` makes calls wait until ``release()`` (a paused
server), and ``lose_answer(name)`` applies the next call of that store function but raises as if its answer
had been lost (the commit went through, the connection did not).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio
from msgspec.structs import replace

from protocol.errors import (
    CallerError,
    Conflict,
    DatabaseUnavailable,
    Fenced,
    KeyReused,
    NotFound,
    VersionMismatch,
)
from protocol.executions import Execution, ExecutionStatus, Origin
from protocol.internal import JobWrite, JobWriteOp
from protocol.jobs import Job, JobState, Semantics
from scheduler_node.clock import ms_to_datetime
from scheduler_node.store import (
    Alert,
    AlertKey,
    AlertRow,
    BatchResult,
    ClaimRow,
    CountRow,
    CreatedJobs,
    ExecKey,
    Fence,
    JobWriteOutcome,
    LagRow,
    NewJob,
    NextFire,
    ResultRow,
    StateChange,
    TakeoverResult,
    UnreadableJob,
    bound_excerpt,
)
from scheduler_node.store.executions import CLAIMABLE, RESULT_STATUSES

S = ExecutionStatus
_UNFINISHED = (S.CLAIMED, S.RETRY_WAIT)


@dataclass
class Row:
    """One ``executions`` row (times in unix ms)."""

    status: ExecutionStatus
    epoch: int
    node: str
    attempt: int = 0
    next_attempt_ms: int | None = None
    claimed_ms: int = 0
    sent_ms: int | None = None
    finished_ms: int | None = None
    http_status: int | None = None
    duration_ms: int | None = None
    dispatch_lag_ms: int | None = None
    error: str | None = None
    response_excerpt: str | None = None
    released: bool = False
    claim_token: int | None = None


@dataclass
class StoredJob:
    job: Job
    semantics: Semantics
    deleted: bool = False
    unreadable: str | None = None  # as if the stored spec did not decode (``corrupt``): the reason

    def read(self) -> Job | UnreadableJob:
        if self.unreadable is None:
            return self.job
        j = self.job
        return UnreadableJob(j.shard, uuid.UUID(j.id), j.tenant, j.version, self.unreadable)


@dataclass
class MemoryStore:
    now_ms: Callable[[], int]
    epochs: dict[int, tuple[int, str]] = field(default_factory=dict)  # shard -> (epoch, owner)
    jobs: dict[tuple[int, uuid.UUID], StoredJob] = field(default_factory=dict)
    cursors: dict[tuple[int, uuid.UUID], int] = field(default_factory=dict)  # job_cursor.last_slot, ms
    rows: dict[ExecKey, Row] = field(default_factory=dict)
    attempts: dict[tuple[ExecKey, int], ResultRow] = field(default_factory=dict)
    alerts: dict[AlertKey, Alert] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # the store functions called, in order
    claimed_again: int = 0  # claim rows refused as already stored: work the engine did for nothing
    execution_counts: dict[tuple[str, int, str], int] = field(default_factory=dict)  # the rollups added
    idempotency: dict[tuple[str, str], tuple[str | None, JobWriteOutcome]] = field(default_factory=dict)
    lag_rows: int = 0
    claim_row_s: float = 0.0  # virtual time a claim statement takes per row (a herd's claims take a while)
    _failures: int = 0
    _down_until: float = -1.0
    _lose_answer_of: set[str] = field(default_factory=set)
    _held: trio.Event | None = None
    _in_flight: dict[int, float] = field(default_factory=dict)
    _tokens: int = 0

    # ---- the TrioStore surface -------------------------------------------------------------------------

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        name = fn.__name__
        self.calls.append(name)
        token = self._tokens = self._tokens + 1
        self._in_flight[token] = trio.current_time()
        try:
            await trio.lowlevel.checkpoint()
            if name in ("claim_rows", "claim_slots") and self.claim_row_s:
                await trio.sleep(len(args[1]) * self.claim_row_s)
            if self._held is not None:
                await self._held.wait()
            if self._failures or trio.current_time() < self._down_until:
                self._failures = max(0, self._failures - 1)
                raise DatabaseUnavailable(f"{name}: connection refused (memory store fault)")
            result = getattr(self, name)(*args, **kwargs)
            if name in self._lose_answer_of:
                self._lose_answer_of.discard(name)
                raise DatabaseUnavailable(f"{name}: connection lost after commit (memory store fault)")
            return result
        finally:
            del self._in_flight[token]

    def stalled_for_s(self) -> float:
        return trio.current_time() - min(self._in_flight.values()) if self._in_flight else 0.0

    def fail(self, n: int) -> None:
        self._failures = n

    def down_for(self, seconds: float) -> None:
        self._down_until = trio.current_time() + seconds

    def lose_answer(self, name: str) -> None:
        self._lose_answer_of.add(name)

    def hold(self) -> None:
        self._held = trio.Event()

    def release(self) -> None:
        if self._held is not None:
            self._held.set()
            self._held = None

    # ---- test helpers ----------------------------------------------------------------------------------

    def rows_of(self, job_id: uuid.UUID) -> dict[tuple[int, Origin], Row]:
        return {(k.slot_ms, k.origin): r for k, r in sorted(self.rows.items()) if k.job_id == job_id}

    def job(self, shard: int, job_id: uuid.UUID) -> Job:
        return self.jobs[(shard, job_id)].job

    def corrupt(self, shard: int, job_id: uuid.UUID, reason: str) -> None:
        """Make the stored job read as a row whose spec does not decode (a newer version's, a hand edit)."""
        self.jobs[(shard, job_id)].unreadable = reason

    # ---- epochs ----------------------------------------------------------------------------------------

    def _fenced(self, pairs: Sequence[tuple[int, int]]) -> frozenset[int]:
        return frozenset(s for s, e in pairs if self.epochs.get(s, (None, ""))[0] != e)

    def bump_epoch(self, shard: int, node: str) -> int:
        epoch = self.epochs.get(shard, (0, ""))[0] + 1
        self.epochs[shard] = (epoch, node)
        return epoch

    def current_epoch(self, shard: int) -> int:
        if shard not in self.epochs:
            raise NotFound(f"shard {shard} has no epoch")
        return self.epochs[shard][0]

    # ---- jobs ------------------------------------------------------------------------------------------

    def _live(self, shard: int, job_id: uuid.UUID, tenant: str | None, expected: int | None) -> StoredJob:
        stored = self.jobs.get((shard, job_id))
        if stored is None or stored.deleted or (tenant is not None and stored.job.tenant != tenant):
            raise NotFound(f"job {job_id} not found")
        if expected is not None and stored.job.version != expected:
            raise VersionMismatch(expected, stored.job.version)
        return stored

    def _outcome(self, stored: StoredJob, *, created: bool = False) -> JobWriteOutcome:
        j = stored.job
        return JobWriteOutcome(
            job_id=uuid.UUID(j.id),
            version=j.version,
            state=j.state,
            next_fire_at=j.next_fire_at,
            created=created,
        )

    def write_job(
        self, fence: Fence, job_id: uuid.UUID, write: JobWrite, *, next_fire_at: datetime | None = None,
        slots: int | None = None,
    ) -> JobWriteOutcome:
        if self._fenced([fence]):
            raise Fenced([fence.shard])
        if write.idempotency_key is not None:
            first = self.idempotency.get((write.tenant, write.idempotency_key))
            if first is not None:
                if first[0] != write.request_hash:
                    raise KeyReused(f"Idempotency-Key '{write.idempotency_key}' was already used")
                return replace(first[1], replayed=True)
            outcome = self.write_job(fence, job_id, replace(write, idempotency_key=None),
                                     next_fire_at=next_fire_at, slots=slots)  # fmt: skip
            self.idempotency[(write.tenant, write.idempotency_key)] = (write.request_hash, outcome)
            return outcome
        now = ms_to_datetime(self.now_ms())
        key = (fence.shard, job_id)
        if write.op is JobWriteOp.UPSERT:
            assert write.spec is not None
            if write.expected_version is None and key not in self.jobs:
                job = Job(
                    id=str(job_id),
                    tenant=write.tenant,
                    spec=write.spec,
                    state=JobState.ACTIVE,
                    version=1,
                    shard=fence.shard,
                    created_at=now,
                    updated_at=now,
                    next_fire_at=next_fire_at,
                )
                self.jobs[key] = StoredJob(job, write.spec.semantics)
                return self._outcome(self.jobs[key], created=True)
            if (old := self.jobs.get(key)) is not None and old.deleted and old.job.tenant == write.tenant:
                raise Conflict(f"job {job_id} was deleted; the id of a deleted job cannot be used again")
            stored = self._live(fence.shard, job_id, write.tenant, write.expected_version)
            j = stored.job
            state = JobState.ACTIVE if j.state in (JobState.COMPLETED, JobState.BROKEN) else j.state
            stored.unreadable = None
            stored.job = replace(
                j,
                spec=write.spec,
                state=state,
                state_reason=None,
                version=j.version + 1,
                updated_at=now,
                next_fire_at=next_fire_at,
            )
            stored.semantics = write.spec.semantics
            return self._outcome(stored)
        stored = self._live(fence.shard, job_id, write.tenant, write.expected_version)
        j = stored.job
        if write.op is JobWriteOp.DELETE:
            stored.deleted = True
            stored.job = replace(j, state=JobState.DELETED, state_reason=None, version=j.version + 1,
                                 updated_at=now, next_fire_at=None)  # fmt: skip
        elif write.op is JobWriteOp.PAUSE:
            self._set_state(stored, JobState.PAUSED, None)
        elif write.op is JobWriteOp.RESUME:
            self._set_state(stored, JobState.ACTIVE, next_fire_at)
        return replace(self._outcome(stored), slots=slots)

    def unsent_fired_claims(self, shard: int, epoch: int, node: str, job_id: uuid.UUID) -> list[ExecKey]:
        return [k for k, r in self.rows.items() if k.shard == shard and k.job_id == job_id
                and k.origin is not Origin.SCHEDULED and r.status is S.CLAIMED and r.epoch == epoch
                and r.node == node and r.sent_ms is None and r.attempt == 0]  # fmt: skip

    def write_job_and_claim(
        self, fence: Fence, job_id: uuid.UUID, write: JobWrite, *, claims: Sequence[ClaimRow], node: str
    ) -> tuple[JobWriteOutcome, list[ExecKey]]:
        outcome = self.write_job(fence, job_id, write, slots=len(claims))
        if outcome.replayed:
            return outcome, []
        return outcome, self.claim_slots(node, claims).applied if claims else []

    def create_jobs(self, rows: Sequence[NewJob]) -> CreatedJobs:
        fenced = self._fenced([(r.shard, r.epoch) for r in rows])
        created: list[Job] = []
        existing: dict[uuid.UUID, JobWriteOutcome] = {}
        refused: dict[uuid.UUID, CallerError] = {}
        for r in rows:
            if r.shard in fenced:
                continue
            old = self.jobs.get((r.shard, r.job_id))
            if old is None:
                w = JobWrite(op=JobWriteOp.UPSERT, actor=r.actor, tenant=r.tenant, spec=r.spec)
                self.write_job(Fence(r.shard, r.epoch), r.job_id, w, next_fire_at=r.next_fire_at)
                created.append(self.jobs[(r.shard, r.job_id)].job)
            elif old.deleted or old.job.tenant != r.tenant:
                refused[r.job_id] = Conflict(f"job id {r.job_id} is taken")
            else:
                existing[r.job_id] = self._outcome(old)
        return CreatedJobs(created, existing, refused, fenced)

    def add_rollups(self, counts: Sequence[CountRow], lags: Sequence[LagRow]) -> None:
        for c in counts:
            key = (c.tenant, c.minute_ms, c.status)
            self.execution_counts[key] = self.execution_counts.get(key, 0) + c.count
        self.lag_rows += len(lags)

    def _set_state(
        self, stored: StoredJob, state: JobState, next_fire_at: datetime | None, reason: str | None = None
    ) -> None:
        j = stored.job
        if j.state is state:
            return
        nfa = next_fire_at if state is JobState.ACTIVE else j.next_fire_at
        stored.job = replace(j, state=state, state_reason=reason, version=j.version + 1,
                             updated_at=ms_to_datetime(self.now_ms()), next_fire_at=nfa)  # fmt: skip

    def set_job_state(
        self,
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
        if self._fenced([fence]):
            raise Fenced([fence.shard])
        stored = self._live(fence.shard, job_id, tenant, expected_version)
        self._set_state(stored, state, next_fire_at, reason or None)
        return self._outcome(stored)

    def set_job_states(self, changes: Sequence[StateChange]) -> BatchResult[tuple[uuid.UUID, int]]:
        fenced = self._fenced([(c.shard, c.epoch) for c in changes])
        latest = {(c.shard, c.job_id): c for c in changes if c.shard not in fenced}
        applied = []
        for (shard, job_id), c in latest.items():
            stored = self.jobs.get((shard, job_id))
            if stored is None or stored.deleted or stored.job.tenant != c.tenant or stored.job.state is c.state:
                continue
            self._set_state(stored, c.state, None, c.reason or None)
            applied.append((job_id, stored.job.version))
        return BatchResult(applied=applied, conflicts=[], fenced=fenced)

    def get_job(
        self, shard: int, job_id: uuid.UUID, *, tenant: str | None = None, include_deleted: bool = False
    ) -> Job:
        stored = self.jobs.get((shard, job_id))
        if (
            stored is None
            or (stored.deleted and not include_deleted)
            or (tenant and stored.job.tenant != tenant)
        ):
            raise NotFound(f"job {job_id} not found")
        return stored.job

    def due_jobs(
        self, shards: Sequence[int], until: datetime, *, after: datetime | None = None
    ) -> list[tuple[Job | UnreadableJob, datetime | None]]:
        out = [
            s
            for (shard, _), s in self.jobs.items()
            if shard in shards
            and not s.deleted
            and s.job.state is JobState.ACTIVE
            and s.job.next_fire_at is not None
            and s.job.next_fire_at <= until
            and (after is None or s.job.next_fire_at > after)
        ]
        out.sort(key=lambda s: (s.job.shard, s.job.next_fire_at, uuid.UUID(s.job.id)))
        return [(s.read(), self._cursor(s.job.shard, uuid.UUID(s.job.id))) for s in out]

    def jobs_by_id(self, shard: int, ids: Sequence[uuid.UUID]) -> list[Job | UnreadableJob]:
        found = [self.jobs.get((shard, i)) for i in sorted(set(ids))]
        return [s.read() for s in found if s is not None and not s.deleted]

    def _cursor(self, shard: int, job_id: uuid.UUID) -> datetime | None:
        ms = self.cursors.get((shard, job_id))
        return None if ms is None else ms_to_datetime(ms)

    def raise_next_fire_at(self, rows: Sequence[NextFire]) -> BatchResult[uuid.UUID]:
        fenced = self._fenced([(r.shard, r.epoch) for r in rows])
        applied: list[uuid.UUID] = []
        for r in rows:
            stored = self.jobs.get((r.shard, r.job_id))
            if r.shard in fenced or stored is None or stored.deleted or stored.job.version != r.version:
                continue
            old = stored.job.next_fire_at
            new = (
                None
                if r.next_fire_at is None
                else r.next_fire_at
                if old is None
                else max(old, r.next_fire_at)
            )
            if new != old:
                stored.job = replace(stored.job, next_fire_at=new)
                applied.append(r.job_id)
        done = set(applied)
        conflicts = [r.job_id for r in rows if r.shard not in fenced and r.job_id not in done]
        return BatchResult(applied=applied, conflicts=conflicts, fenced=fenced)

    # ---- executions ------------------------------------------------------------------------------------

    def claim_rows(
        self, node: str, rows: Sequence[ClaimRow], *, token: int | None = None
    ) -> BatchResult[ClaimRow]:
        for r in rows:
            if r.status not in CLAIMABLE:
                raise ValueError(f"a claim cannot insert status {r.status!s}")
        fenced = self._fenced([(r.shard, r.epoch) for r in rows])
        applied: list[ClaimRow] = []
        conflicts: list[ClaimRow] = []
        now = self.now_ms()
        for r in rows:
            key = r.key()
            if r.shard in fenced:
                continue
            if key in self.rows:
                conflicts.append(r)
                continue
            self.rows[key] = Row(
                r.status,
                r.epoch,
                node,
                attempt=r.attempt,
                claimed_ms=now,
                error=r.error,
                finished_ms=None if r.status is S.CLAIMED else now,
                claim_token=token,
            )
            applied.append(r)
            if r.origin is Origin.SCHEDULED:
                ck = (r.shard, r.job_id)
                self.cursors[ck] = max(self.cursors.get(ck, r.slot_ms), r.slot_ms)
        self.claimed_again += len(conflicts)
        return BatchResult(applied=applied, conflicts=conflicts, fenced=fenced)

    def claim_slots(
        self, node: str, rows: Sequence[ClaimRow], *, token: int | None = None
    ) -> BatchResult[ExecKey]:
        r = self.claim_rows(node, rows, token=token)
        return BatchResult(
            applied=[c.key() for c in r.applied], conflicts=[c.key() for c in r.conflicts], fenced=r.fenced
        )

    def own_unsent_claims(self, node: str, rows: Sequence[ClaimRow], *, token: int) -> list[ExecKey]:
        out = []
        for r in rows:
            row = self.rows.get(r.key())
            if (
                row is not None
                and self.epochs.get(r.shard, (None, ""))[0] == r.epoch == row.epoch
                and row.node == node
                and row.claim_token == token
                and row.status is S.CLAIMED
                and row.attempt == 0
                and row.sent_ms is None
            ):
                out.append(r.key())
        return out

    def write_results(self, rows: Sequence[ResultRow], *, report: bool = True) -> BatchResult[ExecKey]:
        for r in rows:
            if r.status not in RESULT_STATUSES:
                raise ValueError(f"a result cannot set status {r.status!s}")
        fenced = self._fenced([(r.shard, r.epoch) for r in rows])
        latest: dict[ExecKey, ResultRow] = {}
        first_sent: dict[ExecKey, int] = {}
        first_lag: dict[ExecKey, int] = {}
        for r in rows:
            key = r.key()
            latest[key] = r
            if r.sent_ms is not None:
                first_sent.setdefault(key, r.sent_ms)
            if r.dispatch_lag_ms is not None:
                first_lag.setdefault(key, r.dispatch_lag_ms)
        updated: set[ExecKey] = set()
        for key, r in latest.items():
            row = self.rows.get(key)
            if key.shard in fenced or row is None or row.epoch != r.epoch or row.status not in _UNFINISHED:
                continue
            row.status, row.attempt, row.next_attempt_ms = r.status, r.attempt, r.next_attempt_ms
            row.sent_ms = row.sent_ms if row.sent_ms is not None else first_sent.get(key)
            row.dispatch_lag_ms = (
                row.dispatch_lag_ms if row.dispatch_lag_ms is not None else first_lag.get(key)
            )
            row.finished_ms, row.http_status, row.duration_ms = r.finished_ms, r.http_status, r.duration_ms
            row.error, row.response_excerpt = r.error, bound_excerpt(r.response_excerpt)
            updated.add(key)
        for r in rows:
            if r.key() in updated and r.attempt_started_ms is not None:
                self.attempts.setdefault((r.key(), r.attempt), r)
        if not report:
            return BatchResult(applied=[], conflicts=[], fenced=fenced)
        wanted = list(dict.fromkeys(r.key() for r in rows))
        applied = [k for k in wanted if k in updated]
        conflicts = [k for k in wanted if k.shard not in fenced and k not in updated]
        return BatchResult(applied=applied, conflicts=conflicts, fenced=fenced)

    def delete_unsent_claims(self, shard: int, epoch: int, keys: Sequence[ExecKey]) -> BatchResult[ExecKey]:
        if any(k.shard != shard for k in keys):
            raise ValueError(f"every key must belong to shard {shard}")
        if not keys:
            return BatchResult(applied=[], conflicts=[], fenced=frozenset())
        if self._fenced([(shard, epoch)]):
            return BatchResult(applied=[], conflicts=[], fenced=frozenset({shard}))
        applied: list[ExecKey] = []
        first_deleted: dict[uuid.UUID, int] = {}
        for k in dict.fromkeys(keys):
            row = self.rows.get(k)
            if row is None or row.epoch != epoch or row.status is not S.CLAIMED or row.sent_ms is not None:
                continue
            if k.origin is Origin.SCHEDULED:
                del self.rows[k]
                first_deleted[k.job_id] = min(first_deleted.get(k.job_id, k.slot_ms), k.slot_ms)
            else:
                row.released = True
            applied.append(k)
        for job_id, first in first_deleted.items():
            if (shard, job_id) in self.cursors:
                # the SQL lowers the cursor 1 µs below the first deleted slot; in ms that is the slot - 1
                self.cursors[(shard, job_id)] = min(self.cursors[(shard, job_id)], first - 1)
        done = set(applied)
        return BatchResult(applied=applied, conflicts=[k for k in keys if k not in done], fenced=frozenset())

    def take_over_shard(self, shard: int, new_epoch: int) -> TakeoverResult:
        epoch, owner = self.epochs.get(shard, (None, ""))
        if epoch != new_epoch:
            raise Fenced([shard])
        now = self.now_ms()
        out: dict[str, list[Execution]] = {"resume": [], "lost": [], "cancelled": []}
        for key, row in self.rows.items():
            if key.shard != shard or row.status not in _UNFINISHED:
                continue
            if row.epoch == new_epoch:  # an earlier call with this epoch re-stamped it
                out["resume"].append(self._execution(key, row))
                continue
            if row.epoch > new_epoch:
                continue
            stored = self.jobs.get((shard, key.job_id))
            maybe_sent = not row.released and (
                row.status is S.CLAIMED or row.next_attempt_ms is None or row.next_attempt_ms <= now
            )
            if stored is None or stored.deleted:
                action = "cancelled"
                row.status, row.finished_ms, row.next_attempt_ms = S.CANCELLED, now, None
                row.error = "the job was deleted before this execution finished"
            elif stored.semantics is Semantics.AT_MOST_ONCE and maybe_sent:
                action = "lost"
                row.error = (
                    f"claimed by {row.node} (epoch {row.epoch}), which lost the shard before reporting a "
                    "result; AT_MOST_ONCE never re-sends, so the outcome is unknown"
                )
                row.status, row.finished_ms, row.next_attempt_ms = S.LOST, now, None
            else:
                action = "resume"
                row.attempt += 1 if maybe_sent else 0
            row.epoch, row.node, row.released = new_epoch, owner, False
            out[action].append(self._execution(key, row))
        for rows in out.values():
            rows.sort(key=lambda e: (e.scheduled_at, e.job_id, e.origin))
        return TakeoverResult(**out)

    def _execution(self, key: ExecKey, row: Row) -> Execution:
        def dt(ms: int | None) -> datetime | None:
            return None if ms is None else ms_to_datetime(ms)

        return Execution(
            job_id=str(key.job_id),
            shard=key.shard,
            scheduled_at=ms_to_datetime(key.slot_ms),
            origin=key.origin,
            status=row.status,
            epoch=row.epoch,
            node=row.node,
            attempt=row.attempt,
            next_attempt_at=dt(row.next_attempt_ms),
            claimed_at=ms_to_datetime(row.claimed_ms),
            sent_at=dt(row.sent_ms),
            finished_at=dt(row.finished_ms),
            http_status=row.http_status,
            duration_ms=row.duration_ms,
            dispatch_lag_ms=row.dispatch_lag_ms,
            error=row.error,
            response_excerpt=row.response_excerpt,
        )

    def job_cursors(
        self, shard: int, job_ids: Sequence[uuid.UUID] | None = None
    ) -> dict[uuid.UUID, datetime]:
        return {
            job_id: ms_to_datetime(ms)
            for (s, job_id), ms in self.cursors.items()
            if s == shard and (job_ids is None or job_id in job_ids)
        }

    # ---- alerts ----------------------------------------------------------------------------------------

    def insert_alerts(self, rows: Sequence[AlertRow]) -> BatchResult[AlertKey]:
        fenced = self._fenced([(r.shard, r.epoch) for r in rows])
        applied = []
        now = ms_to_datetime(self.now_ms())
        for r in rows:
            if r.shard not in fenced and r.key() not in self.alerts:
                self.alerts[r.key()] = Alert(
                    shard=r.shard,
                    id=uuid.uuid4(),
                    job_id=r.job_id,
                    tenant=r.tenant,
                    scheduled_at=r.scheduled_at,
                    origin=r.origin,
                    kind=r.kind,
                    message=r.message,
                    payload=r.payload,
                    webhook=r.webhook,
                    created_at=now,
                    delivered_at=None,
                    delivery_attempts=0,
                    next_delivery_at=now if r.webhook else None,
                    last_error=None,
                )
                applied.append(r.key())
        done = set(applied)
        conflicts = [r.key() for r in rows if r.shard not in fenced and r.key() not in done]
        self.claimed_again += len(conflicts)
        return BatchResult(applied=applied, conflicts=conflicts, fenced=fenced)

    def pending_deliveries(self, shards: Sequence[int], now: datetime, *, limit: int = 100) -> list[Alert]:
        due = [
            a
            for a in self.alerts.values()
            if a.shard in shards
            and a.delivered_at is None
            and a.webhook
            and a.next_delivery_at is not None
            and a.next_delivery_at <= now
        ]
        return sorted(due, key=lambda a: a.next_delivery_at or now)[:limit]

    def _update_alert(self, shard: int, alert_id: uuid.UUID, **changes: Any) -> bool:
        for key, a in self.alerts.items():
            if a.shard == shard and a.id == alert_id and a.delivered_at is None:
                self.alerts[key] = replace(a, delivery_attempts=a.delivery_attempts + 1, **changes)
                return True
        return False

    def mark_delivered(self, shard: int, alert_id: uuid.UUID) -> bool:
        now = ms_to_datetime(self.now_ms())
        return self._update_alert(shard, alert_id, delivered_at=now, next_delivery_at=None, last_error=None)

    def record_delivery_failure(
        self, shard: int, alert_id: uuid.UUID, error: str, next_delivery_at: datetime | None
    ) -> bool:
        return self._update_alert(shard, alert_id, last_error=error[:1000], next_delivery_at=next_delivery_at)
