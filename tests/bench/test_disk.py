from hypothesis import given
from hypothesis import strategies as st

from bench.disk import DiskSample, write_stalls


def _samples(*rows: tuple[float, int, int]) -> list[DiskSample]:
    return [DiskSample(*r) for r in rows]


def test_a_span_with_writes_in_flight_and_none_completed_is_a_stall_from_the_last_progress() -> None:
    samples = _samples((0.0, 10, 1), (0.1, 11, 1), (0.2, 11, 3), (0.3, 11, 5), (0.45, 11, 5), (0.5, 20, 0))
    assert write_stalls(samples, 0.1) == [(0.1, 0.4)]
    assert write_stalls(samples, 0.5) == []


def test_an_idle_disk_is_not_stalled_and_a_stall_still_open_at_the_end_counts() -> None:
    idle = _samples((0.0, 5, 0), (0.2, 5, 0), (0.4, 5, 0))
    assert write_stalls(idle, 0.1) == []
    open_at_end = _samples((0.0, 5, 1), (0.2, 5, 1), (0.4, 5, 2))
    assert write_stalls(open_at_end, 0.1) == [(0.0, 0.4)]


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=40))
def test_stalls_are_exactly_the_long_runs_without_progress(steps: list[tuple[int, int]]) -> None:
    samples, done = [], 0
    for i, (progress, in_flight) in enumerate(steps):
        done += progress
        samples.append(DiskSample(i * 0.05, done, in_flight))
    stalls = write_stalls(samples, 0.1)
    # reference: every maximal run of consecutive stuck steps, measured from the sample before it
    expected, start = [], None
    for i in range(1, len(samples)):
        stuck = samples[i].writes_done == samples[i - 1].writes_done and samples[i].in_flight and samples[i - 1].in_flight
        if stuck and start is None:
            start = i - 1
        if not stuck and start is not None:
            expected.append((samples[start].at, samples[i].at - samples[start].at))
            start = None
    if start is not None:
        expected.append((samples[start].at, samples[-1].at - samples[start].at))
    assert stalls == [(a, d) for a, d in expected if d >= 0.1]
