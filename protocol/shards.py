"""Shard math: which shard a job lives in, and which node should own a shard. Pure, no I/O.

Rules:
- ``h64(id)`` = the first 8 bytes (big-endian) of BLAKE2b-512 over the job id's 16 raw bytes. BLAKE2b is in
  the standard library and stable across processes, versions and platforms (unlike ``hash()``).
- ``shard = (h64 * S) >> 64``: a multiply-shift range split, so shard s holds the hash range
  ``[s * 2**64 / S, (s + 1) * 2**64 / S)`` and no modulo bias appears for any S.
- The cluster stores ``S`` and ``HASH_NAME`` in PostgreSQL when it is created; a node configured otherwise
  refuses to start (moving to another S is a re-shard, not a restart).
- Rendezvous (highest random weight) ranking: node n's weight for shard s is h64 of ``"{n}\\x00{s}"``.
  Every node computes the same ranking from the same member list, and removing a node moves only the
  shards it ranked first for; adding one takes about S/(N+1) shards, all of them to the newcomer.

Example: with S = 256, a job id whose h64 is 0x8000_0000_0000_0000 lands in shard 128.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

__all__ = ["DEFAULT_SHARD_COUNT", "HASH_NAME", "h64", "rendezvous_owner", "rendezvous_rank", "shard_of"]

HASH_NAME = "blake2b-64/uuid-bytes"
DEFAULT_SHARD_COUNT = 256


def h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data).digest()[:8], "big")


def shard_of(job_id: uuid.UUID | str, shard_count: int = DEFAULT_SHARD_COUNT) -> int:
    if isinstance(job_id, str):
        job_id = uuid.UUID(job_id)
    return (h64(job_id.bytes) * shard_count) >> 64


def _weight(node: str, shard: int) -> int:
    return h64(f"{node}\x00{shard}".encode())


def rendezvous_rank(shard: int, nodes: Iterable[str]) -> list[str]:
    """Nodes in order of preference for ``shard``, best first (ties, vanishingly rare, broken by name)."""
    return sorted(nodes, key=lambda n: (-_weight(n, shard), n))


def rendezvous_owner(shard: int, nodes: Iterable[str]) -> str | None:
    best: tuple[int, str] | None = None
    for n in nodes:
        key = (_weight(n, shard), n)
        if best is None or key[0] > best[0] or (key[0] == best[0] and n < best[1]):
            best = key
    return None if best is None else best[1]
