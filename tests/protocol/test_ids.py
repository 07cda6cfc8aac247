import time
import uuid

from hypothesis import given
from hypothesis import strategies as st

from protocol.ids import new_job_id, new_job_ids, uuid7_time_ms


def test_ids_of_a_batch_are_distinct_version_7_uuids_of_now() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_job_ids(1000)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    for job_id in ids:
        assert job_id.version == 7 and job_id.variant == uuid.RFC_4122
        assert before <= uuid7_time_ms(job_id) <= after
    assert new_job_ids(0) == []


@given(st.integers(0, 2**48 - 1), st.binary(min_size=1, max_size=40))
def test_a_seeded_id_is_the_seeds_and_the_times(ms: int, seed: bytes) -> None:
    job_id = new_job_id(ms, seed)
    assert job_id == new_job_id(ms, seed) and uuid7_time_ms(job_id) == ms
    assert job_id.version == 7 and job_id.variant == uuid.RFC_4122
