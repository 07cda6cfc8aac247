from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.ids import new_job_id, uuid7_time_ms
from protocol.shards import h64, rendezvous_owner, rendezvous_rank, shard_of


def _counts(ids: bytes, shards: int = 256) -> list[int]:
    counts = [0] * shards
    for i in range(0, len(ids), 16):
        counts[(h64(ids[i : i + 16]) * shards) >> 64] += 1
    return counts


def test_each_shard_within_5_percent_over_a_million_ids() -> None:
    # +/-5% of 3,906 ids per shard is a 3.1 sigma band; over 256 shards, fresh random ids leave it in about half
    # of the runs from chance alone. So this check uses one fixed, reproducible id set (seed 1); the chi-squared
    # test below is the statistical check on fresh ids.
    counts = _counts(random.Random(1).randbytes(16 * 1_000_000))
    mean = 1_000_000 / 256
    assert min(counts) >= mean * 0.95 and max(counts) <= mean * 1.05, (min(counts), max(counts))


def test_chi_squared_uniform_on_fresh_ids() -> None:
    counts = _counts(os.urandom(16 * 1_000_000))
    mean = 1_000_000 / 256
    chi2 = sum((c - mean) ** 2 / mean for c in counts)
    # Wilson-Hilferty: the chi-squared(255) quantile for p = 1e-6 (z = 4.753) is about 372.
    df, z = 255, 4.753
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    assert chi2 < critical, (chi2, critical)


def test_known_values_pin_the_hash() -> None:
    # If these change, every stored job moves shard: the hash is part of the on-disk format.
    job = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
    assert h64(job.bytes) == int.from_bytes(__import__("hashlib").blake2b(job.bytes).digest()[:8], "big")
    assert shard_of(job, 256) == (h64(job.bytes) * 256) >> 64
    assert shard_of(str(job), 256) == shard_of(job, 256)
    assert shard_of(uuid.UUID(int=0), 1) == 0


def test_same_id_same_shard_across_processes() -> None:
    ids = [str(new_job_id()) for _ in range(50)]
    code = (
        "import sys; from protocol.shards import shard_of, rendezvous_owner;"
        "ids = sys.argv[1:];"
        "print(' '.join(str(shard_of(i, 256)) for i in ids));"
        "print(' '.join(str(rendezvous_owner(s, ['n1','n2','n3'])) for s in range(256)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, *ids], capture_output=True, text=True, check=True, env=env)
    shards_line, owners_line = out.stdout.splitlines()
    assert shards_line.split() == [str(shard_of(i, 256)) for i in ids]
    assert owners_line.split() == [str(rendezvous_owner(s, ["n1", "n2", "n3"])) for s in range(256)]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4096), st.uuids())
def test_shard_in_range(shard_count: int, job_id: uuid.UUID) -> None:
    assert 0 <= shard_of(job_id, shard_count) < shard_count


node_sets = st.lists(st.from_regex(r"node-[a-z0-9]{1,6}", fullmatch=True), min_size=2, max_size=12, unique=True)


@settings(max_examples=100, deadline=None)
@given(node_sets, st.data())
def test_removing_a_node_moves_only_its_shards(nodes: list[str], data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(nodes))
    rest = [n for n in nodes if n != gone]
    for shard in range(256):
        before, after = rendezvous_owner(shard, nodes), rendezvous_owner(shard, rest)
        if before != gone:
            assert after == before
        assert rendezvous_rank(shard, nodes)[0] == before
        assert rendezvous_rank(shard, rest) == [n for n in rendezvous_rank(shard, nodes) if n != gone]


@settings(max_examples=50, deadline=None)
@given(node_sets, st.from_regex(r"new-[a-z]{1,6}", fullmatch=True))
def test_adding_a_node_moves_shards_only_to_it(nodes: list[str], newcomer: str) -> None:
    for shard in range(256):
        before, after = rendezvous_owner(shard, nodes), rendezvous_owner(shard, [*nodes, newcomer])
        assert after in (before, newcomer)


def test_uuid7_is_time_ordered_and_versioned() -> None:
    a, b = new_job_id(now_ms=1_700_000_000_000), new_job_id(now_ms=1_700_000_000_001)
    assert a.version == 7 and a.variant == uuid.RFC_4122
    assert uuid7_time_ms(a) == 1_700_000_000_000
    assert a < b
