"""Executions: claiming slots, writing results, handing shards over. The firing path's writes.

Rules:
- Every write here is fenced (see ``epochs``): it joins to the ``fence`` CTE, so the rows of a shard whose
  epoch moved on are not written and the shard comes back in ``BatchResult.fenced``.
- One statement per batch: rows travel as one array through ``unnest`` and every part of the operation
  (fence, insert, cursor upsert, attempt rows) is a data-modifying CTE of that one statement. asyncpg's
  ``executemany`` would cost a round trip per row; here 10,000 rows cost one. The firing path's two
  statements take an array of rows (``claim_input``, ``result_input``: each ``ClaimRow`` / ``ResultRow`` as a
  tuple): asyncpg checks each element of an array in Python, so sixteen arrays of scalars cost the node ~3.5
  µs of CPU per result row against ~1.4 µs for one array of rows (docs/bench.md, session 16).
- ``claim_rows`` inserts with ``ON CONFLICT DO NOTHING`` and returns exactly the rows it inserted: only those
  may be sent (``claim_slots``: the same, answered with keys). It raises ``job_cursor.last_slot`` (never
  lowers it) to the newest inserted *scheduled* slot of each job; manual and backfill slots do not move the
  cursor (they are not part of the schedule).
- ``own_unsent_claims`` finds, before a claim is retried after an outage, the rows its lost first attempt
  inserted (by the ``token`` both attempts carry): they are ours to send, though the retry's ``ON CONFLICT``
  would not return them. The token keeps out rows of the node's other claims, which may have been sent.
- ``write_results`` updates a row only if its epoch is the writer's and it is not terminal, so a stale node's
  late result is dropped; it inserts one ``execution_attempts`` row per reported HTTP attempt, except for a run
  that ended at its first attempt (most of them): the execution's own row holds that attempt exactly (sent and
  finished at the attempt's start and end, its status, duration and error), and the readers
  (``list_attempts``, ``list_executions(with_attempts=True)``) take it from there: one row write and ~a fifth of
  the WAL less per firing. Several results for one execution in a batch: the last one (batch order) sets the
  row, every attempt is recorded.
- ``take_over_shard`` (after ``bump_epoch``, before claiming): unfinished rows of older epochs are
  re-stamped with the new epoch and returned to be resumed (sent again, retries continued from ``attempt`` /
  ``next_attempt_at``), except AT_MOST_ONCE rows that may have been sent, which become ``lost``: ``claimed``
  rows, and ``retry_wait`` rows whose retry was due (it may have been in flight). A resumed row that may have
  been sent has its ``attempt`` raised by one (the attempt the old owner may have made), so the resend's
  ``X-Shardwheel-Attempt`` is higher than any the target may have seen. An AT_MOST_ONCE ``retry_wait``
  row whose retry is still in the future was certainly not re-sent (the old owner stopped sending when its
  lease expired, before the takeover), so it is resumed. Rows of deleted jobs are ``cancelled``.
- ``delete_unsent_claims`` (graceful release) deletes the owner's scheduled claims that were never sent and
  lowers each job's cursor below the first deleted slot, so the next owner claims those slots afresh. Manual
  and backfill claims cannot be re-derived from a schedule, so they are not deleted but marked
  ``released_at``: the next owner's takeover resumes them under either semantics.
- On the firing path (``ClaimRow``, ``ResultRow``, ``ExecKey``) times are unix milliseconds (``int``), as the
  wheel keeps them: the statements convert them (``to_timestamp``, ``extract(epoch ...)``), so a batch of
  5,000 results costs no ``datetime`` objects in the node (measured: ~10 % of a node's CPU at 5,000 firings/s
  went to making and encoding them). What is read back for people (``Execution``) has aware datetimes; the
  database stores microseconds.
- ``write_results(..., report=False)`` returns only the fenced shards (what the node's writer needs), not the
  keys of every row written.

Example::

    r = await claim_slots(pool, "node-a", [ClaimRow(7, epoch, job_id, slot_ms)])
    for key in r.applied: send(key)               # only what was inserted
    await write_results(pool, [ResultRow(7, epoch, job_id, slot_ms, Origin.SCHEDULED, ExecutionStatus.SUCCEEDED, 1,
                                         finished_ms=now_ms, http_status=200, ...)], report=False)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec
from msgspec.structs import astuple, replace

from protocol.errors import Fenced
from protocol.executions import ACTIVE, TERMINAL, Execution, ExecutionAttempt, ExecutionStatus, Origin

from .epochs import FENCE_CTE, FENCED_SHARDS_SQL, BatchResult, fence_arrays
from .pool import Executor

__all__ = [
    "EXCERPT_BYTES",
    "ClaimRow",
    "ExecKey",
    "ResultRow",
    "TakeoverResult",
    "bound_excerpt",
    "claim_rows",
    "claim_slots",
    "delete_unsent_claims",
    "execution_counts",
    "failed_executions",
    "job_cursors",
    "list_attempts",
    "list_executions",
    "list_tenant_executions",
    "unsent_fired_claims",
    "own_unsent_claims",
    "take_over_shard",
    "write_results",
]

EXCERPT_BYTES = 1024
S = ExecutionStatus
# Statuses a claim may insert: claimed (to be sent) or a decision recorded without sending.
CLAIMABLE = frozenset({S.CLAIMED, S.SKIPPED_OVERLAP, S.SKIPPED_MISFIRE, S.SKIPPED_PAUSED})
# Statuses a result may set: a retry to come, or the end.
RESULT_STATUSES = frozenset(TERMINAL | {S.RETRY_WAIT})
# "Not finished", spelled so that the planner cannot use the partial index executions_active for it. Its
# statistics are taken while few rows are active, so a full scan of it looks free; with the result write's slot
# range as its only index condition, that scan became the inner side of a nested loop and ran once per result
# (2,000 results against 300,000 active rows: 88 s, holding the claims' row locks). Spelled this way the probe
# goes by primary key, and a full scan of that index is costed at its true size.
_NOT_FINISHED = "e.status NOT IN (" + ", ".join(f"'{t.value}'" for t in sorted(TERMINAL)) + ")"


# A result that ended its run at the first attempt, whose attempt the execution's row as written (``u``) holds
# exactly: what ``_attempt_in_row`` reads back.
_IN_EXECUTION_ROW = (
    "coalesce(i.attempt = 1 AND u.attempt = 1 AND u.status IN ("
    + ", ".join(f"'{t.value}'" for t in sorted(TERMINAL)) + ") AND u.sent_at = i.attempt_started_at"
    " AND u.finished_at IS NOT DISTINCT FROM i.attempt_finished_at AND u.http_status IS NOT DISTINCT FROM"
    " i.http_status AND u.duration_ms IS NOT DISTINCT FROM i.duration_ms AND u.error IS NOT DISTINCT FROM i.error,"
    " false)"
)


class ExecKey(NamedTuple):
    shard: int
    job_id: uuid.UUID
    slot_ms: int  # scheduled_at, unix ms
    origin: Origin


class ClaimRow(msgspec.Struct, frozen=True, gc=False):
    """One slot to claim. ``status`` other than ``claimed`` records a decision taken without sending."""

    shard: int
    epoch: int
    job_id: uuid.UUID
    slot_ms: int  # scheduled_at, unix ms
    origin: Origin = Origin.SCHEDULED
    status: ExecutionStatus = ExecutionStatus.CLAIMED
    attempt: int = 0
    error: str | None = None  # why a slot was skipped

    def key(self) -> ExecKey:
        return ExecKey(self.shard, self.job_id, self.slot_ms, self.origin)


class ResultRow(msgspec.Struct, frozen=True, gc=False):
    """The outcome of one attempt (or a decision), times in unix ms. ``attempt_started_ms`` set: an HTTP attempt
    row is written."""

    shard: int
    epoch: int
    job_id: uuid.UUID
    slot_ms: int  # scheduled_at
    origin: Origin
    status: ExecutionStatus
    attempt: int
    next_attempt_ms: int | None = None  # when status is retry_wait
    sent_ms: int | None = None  # first send; kept if already set
    finished_ms: int | None = None  # when the execution reached a terminal status
    http_status: int | None = None
    duration_ms: int | None = None
    dispatch_lag_ms: int | None = None  # of the first send; kept if already set
    error: str | None = None
    response_excerpt: str | None = None  # cut to EXCERPT_BYTES on write
    attempt_started_ms: int | None = None
    attempt_finished_ms: int | None = None

    def key(self) -> ExecKey:
        return ExecKey(self.shard, self.job_id, self.slot_ms, self.origin)


class TakeoverResult(msgspec.Struct, frozen=True):
    resume: list[Execution]  # re-stamped with the new epoch: send (again) / continue retries
    lost: list[Execution]  # marked lost (AT_MOST_ONCE, possibly sent)
    cancelled: list[Execution]  # their job was deleted


_SURELY_FITS = EXCERPT_BYTES // 4  # characters: at most 4 bytes each in UTF-8


def bound_excerpt(text: str | None) -> str | None:
    """``text`` cut to at most EXCERPT_BYTES of UTF-8, never inside a character."""
    if text is None:
        return None
    raw = text.encode("utf-8", "replace")
    if len(raw) <= EXCERPT_BYTES:
        return text
    return raw[:EXCERPT_BYTES].decode("utf-8", "ignore")


def _key(r: asyncpg.Record) -> ExecKey:
    return ExecKey(r["shard"], r["job_id"], r["slot_ms"], Origin(r["origin"]))


def _ts(column: str) -> str:
    """SQL: a unix-ms bigint column as timestamptz (exact: whole ms fit a double's microseconds)."""
    return f"to_timestamp({column}::float8 / 1000)"


# SQL: the key of a returned execution row with its slot in unix ms.
_KEY_MS = "shard, job_id, (extract(epoch FROM scheduled_at) * 1000)::int8 AS slot_ms, origin"


def _split(
    records: list[asyncpg.Record], wanted: Sequence[ExecKey], fence_shards: list[int]
) -> BatchResult[ExecKey]:
    """Rows of a batch statement (written keys, then fenced shards with NULL keys) -> BatchResult."""
    applied = [_key(r) for r in records if r["job_id"] is not None]
    fenced = frozenset(r["shard"] for r in records if r["job_id"] is None)
    done = set(applied)
    conflicts = [k for k in wanted if k.shard not in fenced and k not in done]
    return BatchResult(applied=applied, conflicts=conflicts, fenced=fenced)


_CLAIM_SQL = f"""
WITH {FENCE_CTE},
input AS (
    SELECT shard, job_id, {_ts("slot_ms")} AS scheduled_at, origin, status, attempt, error, ord
    FROM unnest($4::claim_input[])
        WITH ORDINALITY AS t(shard, epoch, job_id, slot_ms, origin, status, attempt, error, ord)
),
ins AS (
    INSERT INTO executions AS e
        (shard, job_id, scheduled_at, origin, epoch, node, status, attempt, claimed_at, finished_at, error,
         claim_token)
    SELECT i.shard, i.job_id, i.scheduled_at, i.origin, f.epoch, $3, i.status, i.attempt, now(),
           CASE WHEN i.status <> 'claimed' THEN now() END, i.error, $5
    FROM input i JOIN fence f ON f.shard = i.shard
    -- Key order: two overlapping batches take their locks in the same order and cannot deadlock. A slot twice
    -- in the batch: its first row is inserted, the second is a conflict.
    ORDER BY i.shard, i.job_id, i.scheduled_at, i.origin, i.ord
    ON CONFLICT DO NOTHING
    RETURNING e.shard, e.job_id, e.scheduled_at, e.origin
),
cursor_upsert AS (
    INSERT INTO job_cursor AS c (shard, job_id, last_slot)
    SELECT shard, job_id, max(scheduled_at) FROM ins WHERE origin = 'scheduled'
    GROUP BY shard, job_id ORDER BY shard, job_id
    ON CONFLICT (shard, job_id) DO UPDATE SET last_slot = excluded.last_slot
        WHERE c.last_slot < excluded.last_slot
)
-- One row: the batch positions of the slots inserted (a slot twice in the batch matches both of its rows:
-- told apart by the count), and the fenced shards.
SELECT (SELECT count(*) FROM ins) AS inserted,
       ARRAY(SELECT i.ord FROM ins JOIN input i ON i.shard = ins.shard AND i.job_id = ins.job_id
                 AND i.scheduled_at = ins.scheduled_at AND i.origin = ins.origin) AS positions,
       ARRAY({FENCED_SHARDS_SQL}) AS fenced
"""


async def claim_rows(
    db: Executor, node: str, rows: Sequence[ClaimRow], *, token: int | None = None
) -> BatchResult[ClaimRow]:
    """Claim slots in one fenced statement; ``applied`` is exactly the rows inserted (they may be sent), in
    batch order, the batch's own objects. ``token`` marks the rows as this claim's, for ``own_unsent_claims``
    should its answer be lost.

    The answer is one row of positions, not a row per slot: decoding a row and making its key cost the node
    ~10 % of its CPU per firing (docs/bench.md, session 16).
    """
    if not rows:
        return BatchResult(applied=[], conflicts=[], fenced=frozenset())
    for r in rows:
        if r.status not in CLAIMABLE:
            raise ValueError(f"a claim cannot insert status {r.status!s}")
    shards, epochs = fence_arrays((r.shard, r.epoch) for r in rows)
    record = await db.fetchrow(_CLAIM_SQL, shards, epochs, node, [astuple(r) for r in rows], token)
    assert record is not None
    fenced = frozenset(record["fenced"])
    positions: list[int] = record["positions"]
    if len(positions) == len(rows) == record["inserted"]:
        return BatchResult(applied=list(rows), conflicts=[], fenced=fenced)
    positions.sort()
    if len(positions) != record["inserted"]:  # a slot twice in the batch: only its first row was inserted
        first: dict[ExecKey, int] = {}
        for i in positions:
            first.setdefault(rows[i - 1].key(), i)
        positions = list(first.values())
    taken = set(positions)
    return BatchResult(
        applied=[rows[i - 1] for i in positions],
        conflicts=[r for i, r in enumerate(rows, 1) if i not in taken and r.shard not in fenced],
        fenced=fenced,
    )


async def claim_slots(
    db: Executor, node: str, rows: Sequence[ClaimRow], *, token: int | None = None
) -> BatchResult[ExecKey]:
    """``claim_rows`` answered with the slots' keys."""
    r = await claim_rows(db, node, rows, token=token)
    return BatchResult(
        applied=[c.key() for c in r.applied], conflicts=[c.key() for c in r.conflicts], fenced=r.fenced
    )


_OWN_UNSENT_SQL = f"""
SELECT e.shard, e.job_id, (extract(epoch FROM e.scheduled_at) * 1000)::int8 AS slot_ms, e.origin
FROM unnest($1::int[], $2::bigint[], $3::uuid[], $4::int8[], $5::text[])
    AS k(shard, epoch, job_id, slot_ms, origin)
JOIN shard_epochs se ON se.shard = k.shard AND se.epoch = k.epoch  -- still ours: not taken over since
JOIN executions e ON e.shard = k.shard AND e.job_id = k.job_id AND e.origin = k.origin
                 AND e.scheduled_at = {_ts("k.slot_ms")}
WHERE e.epoch = k.epoch AND e.node = $6 AND e.claim_token = $7 AND e.status = 'claimed' AND e.attempt = 0
  AND e.sent_at IS NULL
"""


async def own_unsent_claims(
    db: Executor, node: str, rows: Sequence[ClaimRow], *, token: int
) -> list[ExecKey]:
    """Of ``rows``, those stored as unsent claims of ``node``'s claim ``token`` at the row's epoch, still the
    shard's.

    A claim statement whose answer was lost (PostgreSQL went away mid-commit) may have inserted its rows; its
    retry would see them as conflicts and never send them. Asked before such a retry, this finds them.
    """
    if not rows:
        return []
    records = await db.fetch(
        _OWN_UNSENT_SQL,
        [r.shard for r in rows], [r.epoch for r in rows], [r.job_id for r in rows], [r.slot_ms for r in rows],
        [r.origin.value for r in rows], node, token,
    )  # fmt: skip
    return [_key(r) for r in records]


_RESULTS_SQL = f"""
WITH {FENCE_CTE},
input AS (
    SELECT shard, job_id, {_ts("slot_ms")} AS scheduled_at, origin, status, attempt,
           {_ts("next_attempt_ms")} AS next_attempt_at, {_ts("sent_ms")} AS sent_at,
           {_ts("finished_ms")} AS finished_at, http_status, duration_ms, dispatch_lag_ms, error, response_excerpt,
           {_ts("attempt_started_ms")} AS attempt_started_at, {_ts("attempt_finished_ms")} AS attempt_finished_at,
           ord
    FROM unnest($5::result_input[]) WITH ORDINALITY AS t(shard, epoch, job_id, slot_ms, origin, status,
        attempt, next_attempt_ms, sent_ms, finished_ms, http_status, duration_ms, dispatch_lag_ms, error,
        response_excerpt, attempt_started_ms, attempt_finished_ms, ord)
),
latest AS (
    -- The last result of each execution in batch order sets the row; the first send's time and lag are kept.
    SELECT DISTINCT ON (shard, job_id, scheduled_at, origin) *,
        first_value(sent_at) OVER (PARTITION BY shard, job_id, scheduled_at, origin
                                   ORDER BY sent_at IS NULL, ord) AS first_sent_at,
        first_value(dispatch_lag_ms) OVER (PARTITION BY shard, job_id, scheduled_at, origin
                                           ORDER BY dispatch_lag_ms IS NULL, ord) AS first_lag_ms
    FROM input ORDER BY shard, job_id, scheduled_at, origin, ord DESC
),
upd AS (
    UPDATE executions e SET
        status = l.status, attempt = l.attempt, next_attempt_at = l.next_attempt_at,
        sent_at = coalesce(e.sent_at, l.first_sent_at), finished_at = l.finished_at,
        http_status = l.http_status, duration_ms = l.duration_ms,
        dispatch_lag_ms = coalesce(e.dispatch_lag_ms, l.first_lag_ms),
        error = l.error, response_excerpt = l.response_excerpt
    FROM latest l JOIN fence f ON f.shard = l.shard
    WHERE e.shard = l.shard AND e.job_id = l.job_id AND e.scheduled_at = l.scheduled_at AND e.origin = l.origin
      AND e.epoch = f.epoch AND {_NOT_FINISHED}
      -- constant bounds let the planner prune partitions at executor start
      AND e.scheduled_at BETWEEN {_ts("$3::int8")} AND {_ts("$4::int8")}
    RETURNING e.shard, e.job_id, e.scheduled_at, e.origin, e.epoch, e.node, e.status, e.attempt, e.sent_at,
              e.finished_at, e.http_status, e.duration_ms, e.error
),
attempts AS (
    INSERT INTO execution_attempts
        (shard, job_id, scheduled_at, origin, attempt, epoch, node, started_at, finished_at, http_status,
         duration_ms, error)
    SELECT i.shard, i.job_id, i.scheduled_at, i.origin, i.attempt, u.epoch, u.node, i.attempt_started_at,
           i.attempt_finished_at, i.http_status, i.duration_ms, i.error
    FROM input i
    JOIN upd u ON u.shard = i.shard AND u.job_id = i.job_id AND u.scheduled_at = i.scheduled_at
              AND u.origin = i.origin
    WHERE i.attempt_started_at IS NOT NULL AND NOT ({_IN_EXECUTION_ROW})
    ON CONFLICT DO NOTHING
)
SELECT {_KEY_MS} FROM upd
UNION ALL
SELECT s, NULL, NULL, NULL FROM ({FENCED_SHARDS_SQL}) fenced
"""
# The same statement answering only with fenced shards (data-modifying CTEs run whether read or not).
_RESULTS_FENCED_SQL = _RESULTS_SQL[: _RESULTS_SQL.rindex("SELECT shard, job_id")] + (
    f"SELECT s AS shard, NULL::uuid AS job_id FROM ({FENCED_SHARDS_SQL}) fenced"
)


async def write_results(
    db: Executor, rows: Sequence[ResultRow], *, report: bool = True
) -> BatchResult[ExecKey]:
    """Write results in one fenced statement. ``conflicts``: rows not updated (other epoch, terminal, missing).

    ``report=False``: ``applied`` and ``conflicts`` stay empty, only ``fenced`` is filled (the node's writer).
    """
    if not rows:
        return BatchResult(applied=[], conflicts=[], fenced=frozenset())
    for r in rows:
        if r.status not in RESULT_STATUSES:
            raise ValueError(f"a result cannot set status {r.status!s}")
    shards, epochs = fence_arrays((r.shard, r.epoch) for r in rows)
    slots = [r.slot_ms for r in rows]
    inputs = [
        astuple(r if r.response_excerpt is None or len(r.response_excerpt) <= _SURELY_FITS
                else replace(r, response_excerpt=bound_excerpt(r.response_excerpt)))
        for r in rows
    ]  # fmt: skip
    records = await db.fetch(
        _RESULTS_SQL if report else _RESULTS_FENCED_SQL, shards, epochs, min(slots), max(slots), inputs
    )
    if not report:
        return BatchResult(applied=[], conflicts=[], fenced=frozenset(r["shard"] for r in records))
    wanted = list(dict.fromkeys(r.key() for r in rows))
    return _split(records, wanted, shards)


_RELEASE_SQL = f"""
WITH {FENCE_CTE},
keys AS (
    SELECT job_id, {_ts("slot_ms")} AS scheduled_at, origin
    FROM unnest($3::uuid[], $4::int8[], $5::text[]) AS k(job_id, slot_ms, origin)
),
deleted AS (
    DELETE FROM executions e USING keys k, fence f
    WHERE e.shard = f.shard AND e.job_id = k.job_id AND e.scheduled_at = k.scheduled_at AND e.origin = k.origin
      AND e.epoch = f.epoch AND e.status = 'claimed' AND e.sent_at IS NULL AND e.origin = 'scheduled'
    RETURNING e.shard, e.job_id, e.scheduled_at, e.origin
),
handed AS (
    UPDATE executions e SET released_at = now() FROM keys k, fence f
    WHERE e.shard = f.shard AND e.job_id = k.job_id AND e.scheduled_at = k.scheduled_at AND e.origin = k.origin
      AND e.epoch = f.epoch AND e.status = 'claimed' AND e.sent_at IS NULL AND e.origin <> 'scheduled'
    RETURNING e.shard, e.job_id, e.scheduled_at, e.origin
),
cursor_lowered AS (
    -- The deleted slots must look unclaimed to the next owner: move the cursor just below the first of them.
    UPDATE job_cursor c SET last_slot = least(c.last_slot, d.first_slot - interval '1 microsecond')
    FROM (SELECT shard, job_id, min(scheduled_at) AS first_slot FROM deleted GROUP BY shard, job_id) d
    WHERE c.shard = d.shard AND c.job_id = d.job_id
)
SELECT {_KEY_MS} FROM deleted
UNION ALL SELECT {_KEY_MS} FROM handed
UNION ALL SELECT s, NULL, NULL, NULL FROM ({FENCED_SHARDS_SQL}) fenced
"""


async def delete_unsent_claims(
    db: Executor, shard: int, epoch: int, keys: Sequence[ExecKey]
) -> BatchResult[ExecKey]:
    """Graceful release: give back the owner's claims in ``keys`` that were never sent (one fenced statement).

    ``applied``: the claims given back (scheduled ones deleted, others marked released); ``conflicts``: keys
    that were not unsent claims of this epoch (already sent, finished, or unknown). Raises nothing when fenced:
    the result says so.
    """
    if any(k.shard != shard for k in keys):
        raise ValueError(f"every key must belong to shard {shard}")
    if not keys:
        return BatchResult(applied=[], conflicts=[], fenced=frozenset())
    records = await db.fetch(
        _RELEASE_SQL, [shard], [epoch],
        [k.job_id for k in keys], [k.slot_ms for k in keys], [Origin(k.origin).value for k in keys],
    )  # fmt: skip
    return _split(records, list(keys), [shard])


EXEC_COLUMNS = (
    "shard, job_id, scheduled_at, origin, status, epoch, node, attempt, next_attempt_at, claimed_at, sent_at,"
    " finished_at, http_status, duration_ms, dispatch_lag_ms, error, response_excerpt"
)


def _execution(
    r: asyncpg.Record | dict[str, Any], attempts: list[ExecutionAttempt] | None = None
) -> Execution:
    return Execution(
        job_id=str(r["job_id"]), shard=r["shard"], scheduled_at=r["scheduled_at"], origin=Origin(r["origin"]),
        status=ExecutionStatus(r["status"]), epoch=r["epoch"], node=r["node"], attempt=r["attempt"],
        next_attempt_at=r["next_attempt_at"], claimed_at=r["claimed_at"], sent_at=r["sent_at"],
        finished_at=r["finished_at"], http_status=r["http_status"], duration_ms=r["duration_ms"],
        dispatch_lag_ms=r["dispatch_lag_ms"], error=r["error"], response_excerpt=r["response_excerpt"],
        attempts=attempts or [],
    )  # fmt: skip


_TAKEOVER_SQL = f"""
WITH fence AS (
    SELECT shard, epoch, coalesce(owner, '') AS owner FROM shard_epochs WHERE shard = $1 AND epoch = $2 FOR SHARE
),
stale AS (
    SELECT e.job_id, e.scheduled_at, e.origin, e.epoch AS old_epoch, e.node AS old_node, m.maybe_sent,
        CASE
            WHEN j.id IS NULL OR j.deleted_at IS NOT NULL THEN 'cancelled'
            WHEN j.semantics = 'AT_MOST_ONCE' AND m.maybe_sent THEN 'lost'
            ELSE 'resume'
        END AS action
    FROM executions e
    LEFT JOIN jobs j ON j.shard = e.shard AND j.id = e.job_id
    -- The old owner may have sent the row's next attempt: a claim, or a retry that was due.
    CROSS JOIN LATERAL (
        SELECT e.released_at IS NULL
               AND (e.status = 'claimed' OR e.next_attempt_at IS NULL OR e.next_attempt_at <= now()) AS maybe_sent
    ) m
    WHERE e.shard = $1 AND e.status IN ('claimed', 'retry_wait') AND e.epoch < $2
      AND EXISTS (SELECT 1 FROM fence)
),
changed AS (
    UPDATE executions e SET
        epoch = f.epoch, node = f.owner, released_at = NULL,
        -- counted as made: the resend carries one more, so a target can tell a replay from a first try
        attempt = CASE WHEN s.action = 'resume' AND s.maybe_sent THEN e.attempt + 1 ELSE e.attempt END,
        status = CASE s.action WHEN 'resume' THEN e.status ELSE s.action END,
        finished_at = CASE s.action WHEN 'resume' THEN NULL ELSE now() END,
        next_attempt_at = CASE s.action WHEN 'resume' THEN e.next_attempt_at END,
        error = CASE s.action
            WHEN 'lost' THEN format('claimed by %s (epoch %s), which lost the shard before reporting a result; '
                                    'AT_MOST_ONCE never re-sends, so the outcome is unknown', s.old_node, s.old_epoch)
            WHEN 'cancelled' THEN 'the job was deleted before this execution finished'
            ELSE e.error END
    FROM stale s, fence f
    WHERE e.shard = $1 AND e.job_id = s.job_id AND e.scheduled_at = s.scheduled_at AND e.origin = s.origin
    RETURNING s.action, {", ".join("e." + c.strip() for c in EXEC_COLUMNS.split(","))}
)
SELECT * FROM changed
UNION ALL
-- Rows an earlier call with this epoch already re-stamped (a retried takeover) are resumed again.
SELECT 'resume', {EXEC_COLUMNS} FROM executions
WHERE shard = $1 AND epoch = $2 AND status IN ('claimed', 'retry_wait') AND EXISTS (SELECT 1 FROM fence)
UNION ALL
SELECT 'fenced', $1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
WHERE NOT EXISTS (SELECT 1 FROM fence)
"""


async def take_over_shard(db: Executor, shard: int, new_epoch: int) -> TakeoverResult:
    """Settle the unfinished executions of older epochs after ``bump_epoch``; call before claiming.

    Raises ``Fenced`` if ``new_epoch`` is no longer the shard's epoch. Idempotent for one epoch: a retried
    call returns the same ``resume`` rows (the ``lost`` and ``cancelled`` ones only the first time).
    """
    records = await db.fetch(_TAKEOVER_SQL, shard, new_epoch)
    if any(r["action"] == "fenced" for r in records):
        raise Fenced([shard])
    out: dict[str, list[Execution]] = {"resume": [], "lost": [], "cancelled": []}
    for r in records:
        out[r["action"]].append(_execution(r))
    for rows in out.values():
        rows.sort(key=lambda e: (e.scheduled_at, e.job_id, e.origin))
    return TakeoverResult(**out)


async def job_cursors(
    db: Executor, shard: int, job_ids: Sequence[uuid.UUID] | None = None
) -> dict[uuid.UUID, datetime]:
    """``job_cursor.last_slot`` of a shard's jobs (all of them, or ``job_ids``): the misfire baseline."""
    if job_ids is None:
        rows = await db.fetch("SELECT job_id, last_slot FROM job_cursor WHERE shard = $1", shard)
    else:
        rows = await db.fetch(
            "SELECT job_id, last_slot FROM job_cursor WHERE shard = $1 AND job_id = ANY($2::uuid[])",
            shard, list(job_ids),
        )  # fmt: skip
    return {r["job_id"]: r["last_slot"] for r in rows}


async def unsent_fired_claims(db: Executor, shard: int, epoch: int, node: str, job_id: uuid.UUID) -> list[ExecKey]:
    """A job's manual and backfill claims that ``node`` made at ``epoch`` and never sent: what a trigger whose
    answer was lost committed, found when its retry is answered from the Idempotency-Key record."""
    rows = await db.fetch(
        "SELECT shard, job_id, (extract(epoch FROM scheduled_at) * 1000)::int8 AS slot_ms, origin FROM executions"
        " WHERE shard = $1 AND job_id = $2 AND origin IN ('manual', 'backfill') AND status = 'claimed'"
        " AND epoch = $3 AND node = $4 AND sent_at IS NULL AND attempt = 0",
        shard, job_id, epoch, node,
    )  # fmt: skip
    return [_key(r) for r in rows]


async def list_executions(
    db: Executor,
    shard: int,
    job_id: uuid.UUID,
    *,
    limit: int = 20,
    statuses: Sequence[ExecutionStatus] | None = None,
    before: datetime | None = None,
    with_attempts: bool = False,
) -> list[Execution]:
    """A job's executions, newest slot first (the primary key read backwards); ``before`` pages by slot."""
    where = ["shard = $1", "job_id = $2"]
    args: list[Any] = [shard, job_id]
    if statuses:
        args.append([s.value for s in statuses])
        where.append(f"status = ANY(${len(args)}::text[])")
    if before is not None:
        args.append(before)
        where.append(f"scheduled_at < ${len(args)}")
    args.append(limit)
    rows = await db.fetch(
        f"SELECT {EXEC_COLUMNS} FROM executions WHERE {' AND '.join(where)}"
        f" ORDER BY scheduled_at DESC, origin LIMIT ${len(args)}",
        *args,
    )
    if not with_attempts or not rows:
        return [_execution(r) for r in rows]
    stored: dict[tuple[datetime, str], list[ExecutionAttempt]] = {}
    for a in await db.fetch(
        "SELECT scheduled_at, origin, attempt, started_at, finished_at, http_status, duration_ms, error"
        " FROM execution_attempts WHERE shard = $1 AND job_id = $2 AND scheduled_at = ANY($3::timestamptz[])"
        " ORDER BY attempt",
        shard, job_id, [r["scheduled_at"] for r in rows],
    ):  # fmt: skip
        stored.setdefault((a["scheduled_at"], a["origin"]), []).append(_attempt(a))

    def attempts(r: asyncpg.Record) -> list[ExecutionAttempt]:
        first = _attempt_in_row(r)
        return stored.get((r["scheduled_at"], r["origin"])) or ([] if first is None else [first])

    return [_execution(r, attempts(r)) for r in rows]


async def list_tenant_executions(
    db: Executor,
    *,
    tenant: str,
    since: datetime,
    until: datetime,
    statuses: Sequence[ExecutionStatus] | None = None,
    after: tuple[datetime, uuid.UUID, str] | None = None,
    limit: int = 100,
) -> list[Execution]:
    """A tenant's executions across its jobs with ``since <= scheduled_at < until``, newest slot first (then
    job id, origin, descending); ``after``: the key of the last row of the previous page. The window bounds
    the scan (``executions_scheduled_brin``): callers cap it."""
    where = ["j.tenant = $1", "e.scheduled_at >= $2", "e.scheduled_at < $3"]
    args: list[Any] = [tenant, since, until]
    if statuses:
        args.append([s.value for s in statuses])
        where.append(f"e.status = ANY(${len(args)}::text[])")
    if after is not None:
        args += list(after)
        n = len(args)
        where.append(f"(e.scheduled_at, e.job_id, e.origin) < (${n - 2}, ${n - 1}, ${n})")
    args.append(limit)
    columns = ", ".join(f"e.{c.strip()}" for c in EXEC_COLUMNS.split(","))
    rows = await db.fetch(
        f"SELECT {columns} FROM executions e JOIN jobs j ON j.shard = e.shard AND j.id = e.job_id"
        f" WHERE {' AND '.join(where)}"
        f" ORDER BY e.scheduled_at DESC, e.job_id DESC, e.origin DESC LIMIT ${len(args)}",
        *args,
    )
    return [_execution(r) for r in rows]


def _attempt(a: asyncpg.Record) -> ExecutionAttempt:
    return ExecutionAttempt(
        attempt=a["attempt"], started_at=a["started_at"], finished_at=a["finished_at"],
        http_status=a["http_status"], duration_ms=a["duration_ms"], error=a["error"],
    )  # fmt: skip


def _attempt_in_row(r: asyncpg.Record) -> ExecutionAttempt | None:
    """The first attempt of a run that ended with it, as its execution's row holds it (``write_results`` then
    stores no attempt row); None for any other execution."""
    if r["attempt"] != 1 or r["sent_at"] is None or ExecutionStatus(r["status"]) not in TERMINAL:
        return None
    return ExecutionAttempt(attempt=1, started_at=r["sent_at"], finished_at=r["finished_at"],
                            http_status=r["http_status"], duration_ms=r["duration_ms"], error=r["error"])  # fmt: skip


async def list_attempts(db: Executor, key: ExecKey) -> list[ExecutionAttempt]:
    where = f"shard = $1 AND job_id = $2 AND scheduled_at = {_ts('$3::int8')} AND origin = $4"
    args = (key.shard, key.job_id, key.slot_ms, Origin(key.origin).value)
    rows = await db.fetch(
        "SELECT attempt, started_at, finished_at, http_status, duration_ms, error FROM execution_attempts"
        f" WHERE {where} ORDER BY attempt",
        *args,
    )  # fmt: skip
    if rows:
        return [_attempt(a) for a in rows]
    execution = await db.fetchrow(f"SELECT attempt, sent_at, finished_at, http_status, duration_ms, error, status"
                                  f" FROM executions WHERE {where}", *args)  # fmt: skip
    first = None if execution is None else _attempt_in_row(execution)
    return [] if first is None else [first]


async def failed_executions(
    db: Executor, *, tenant: str | None = None, before: datetime | None = None, limit: int = 50
) -> list[Execution]:
    """Failed and timed-out executions across jobs, newest ``finished_at`` first (the ``executions_failed`` index).

    ``before`` pages by ``finished_at``. With ``tenant``, only that tenant's jobs.
    """
    where = ["e.status IN ('failed', 'timed_out')"]
    args: list[Any] = []
    if before is not None:
        args.append(before)
        where.append(f"e.finished_at < ${len(args)}")
    join = ""
    if tenant is not None:
        args.append(tenant)
        join = "JOIN jobs j ON j.shard = e.shard AND j.id = e.job_id"
        where.append(f"j.tenant = ${len(args)}")
    args.append(limit)
    cols = ", ".join("e." + c.strip() for c in EXEC_COLUMNS.split(","))
    rows = await db.fetch(
        f"SELECT {cols} FROM executions e {join} WHERE {' AND '.join(where)}"
        f" ORDER BY e.finished_at DESC LIMIT ${len(args)}",
        *args,
    )
    return [_execution(r) for r in rows]


async def execution_counts(
    db: Executor, shard: int, job_id: uuid.UUID, *, since: datetime | None = None
) -> dict[ExecutionStatus, int]:
    """Per-status counts of a job's executions (per-job counters are derived, never updated per firing)."""
    rows = await db.fetch(
        "SELECT status, count(*) AS n FROM executions WHERE shard = $1 AND job_id = $2"
        " AND ($3::timestamptz IS NULL OR scheduled_at >= $3) GROUP BY status",
        shard, job_id, since,
    )  # fmt: skip
    return {ExecutionStatus(r["status"]): r["n"] for r in rows}


# Sanity: the SQL above spells the active statuses by hand; keep them in step with protocol.executions.
assert {s.value for s in ACTIVE} == {"claimed", "retry_wait"}
