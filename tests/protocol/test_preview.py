"""Preview: the node's slots, shown in UTC and in the job's zone, noted where daylight saving time acted."""

from __future__ import annotations

from datetime import UTC, datetime

from protocol.jobs import DstPolicy, DstRepeat, JobSpec, Target
from protocol.schedules import Cron, Every
from protocol.slots import preview
from protocol.slots.instants import preview_instants


def spec(cron: str, zone: str = "Europe/London", **kw: object) -> JobSpec:
    return JobSpec(name="p", schedule=Cron(cron), target=Target(url="https://e.example/"), timezone=zone,
                   **kw)  # type: ignore[arg-type]  # fmt: skip


def test_a_shifted_gap_slot_and_a_repeated_wall_time_are_noted() -> None:
    spring = preview_instants(spec("0 30 1 * * *"), datetime(2026, 3, 27, 12, tzinfo=UTC), 3)
    assert [(p.utc.isoformat(), p.local.isoformat(), p.dst) for p in spring] == [
        ("2026-03-28T01:30:00+00:00", "2026-03-28T01:30:00+00:00", None),
        ("2026-03-29T01:00:00+00:00", "2026-03-29T02:00:00+01:00", "gap"),  # 01:30 does not exist: shifted
        ("2026-03-30T00:30:00+00:00", "2026-03-30T01:30:00+01:00", None),
    ]
    autumn = preview_instants(spec("0 30 1 * * *", dst=DstPolicy(repeat=DstRepeat.BOTH)),
                              datetime(2026, 10, 24, 12, tzinfo=UTC), 3)  # fmt: skip
    assert [(p.utc.isoformat(), p.local.isoformat(), p.dst) for p in autumn] == [
        ("2026-10-25T00:30:00+00:00", "2026-10-25T01:30:00+01:00", "repeat"),
        ("2026-10-25T01:30:00+00:00", "2026-10-25T01:30:00+00:00", "repeat"),
        ("2026-10-26T01:30:00+00:00", "2026-10-26T01:30:00+00:00", None),
    ]


def test_the_instants_are_the_rules_own() -> None:
    after = datetime(2026, 11, 28, 10, 0, 0, 500_000, tzinfo=UTC)
    for s in (spec("*/7 * * * * *", "Asia/Kolkata"), JobSpec(name="e", schedule=Every("90s"),
                                                             target=Target(url="https://e.example/"))):  # fmt: skip
        assert [p.utc for p in preview_instants(s, after, 20)] == preview(s, after, 20)
        assert all(p.dst is None for p in preview_instants(s, after, 20))
