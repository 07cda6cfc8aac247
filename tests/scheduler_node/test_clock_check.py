"""The clock check's decision against a model of one measurement: a node is refused only for an offset it
provably has, and always for one past the limit by more than the measurement's error."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler_node.clock_check import Sample, best_offset, beyond_limit

delays = st.floats(0, 500, allow_nan=False)


@given(st.floats(-1000, 1000, allow_nan=False), delays, delays, st.floats(1, 200, allow_nan=False))
def test_refused_only_for_what_the_node_provably_is(true_offset: float, there: float, back: float,
                                                    limit: float) -> None:  # fmt: skip
    # The node sends at 1000 on its clock; PostgreSQL reads its clock `there` ms later (its clock is the node's
    # plus the true offset); the answer arrives `back` ms after that.
    sample = Sample(1000.0, 1000.0 + there + true_offset, 1000.0 + there + back)
    assert abs(sample.offset_ms - true_offset) <= sample.rtt_ms / 2 + 1e-9  # the error bound the rule uses
    refused = beyond_limit(sample.offset_ms, sample.rtt_ms, limit)
    if refused:
        assert abs(true_offset) > limit - 1e-9  # (float rounding at the boundary)
    if abs(true_offset) > limit + sample.rtt_ms:
        assert refused


def test_the_shortest_round_trip_is_kept() -> None:
    samples = [Sample(0, 60, 100), Sample(200, 251, 202), Sample(300, 400, 340)]
    assert best_offset(samples) == samples[1] and samples[1].offset_ms == 50.0
    assert not beyond_limit(-54.0, 120.0, 50.0)  # what a loaded PostgreSQL measured: within the error
    assert beyond_limit(-54.0, 4.0, 50.0)
