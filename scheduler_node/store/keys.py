"""API keys: created once, shown once, stored only as a hash.

Rules:
- A key is ``sw_`` + 43 URL-safe characters (256 random bits). Only its SHA-256 is stored: with 256 bits of
  entropy there is nothing to brute-force, so a slow password hash (bcrypt, argon2) would only add latency to
  every request. Lookups are by hash (a unique index), so verifying a key costs one indexed read.
- ``prefix`` (the first 10 characters) is stored in clear so that people can tell their keys apart in lists.
- A key carries one tenant and one role (admin, writer, reader), and optionally its own rate limit.
- Revocation is a timestamp; a revoked key never authenticates again. Creation and revocation are audited
  under the cluster-wide shard (-1).

Example::

    secret, key = await create_api_key(pool, tenant="acme", role=Role.WRITER, name="ci", actor="admin")
    assert (await lookup_api_key(pool, secret)).id == key.id
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import uuid
from datetime import datetime

import asyncpg
import msgspec

from protocol.errors import SpecError
from protocol.ids import new_job_id

from .audit import CLUSTER_SHARD, insert_audit
from .pool import Executor, transaction

__all__ = [
    "ApiKey",
    "Role",
    "create_api_key",
    "generate_api_key",
    "hash_api_key",
    "list_api_keys",
    "lookup_api_key",
    "revoke_api_key",
]

KEY_PREFIX = "sw_"
SHOWN_PREFIX_CHARS = 10


class Role(enum.StrEnum):
    ADMIN = "admin"  # every tenant, cluster operations, keys
    WRITER = "writer"  # its tenant's jobs, read and write
    READER = "reader"  # its tenant's jobs, read only


class ApiKey(msgspec.Struct, frozen=True):
    id: uuid.UUID
    prefix: str
    tenant: str
    role: Role
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    rate_limit_per_s: float | None = None
    burst: int | None = None


_COLUMNS = "id, prefix, tenant, role, name, created_at, revoked_at, rate_limit_per_s, burst"


def _key(r: asyncpg.Record) -> ApiKey:
    return ApiKey(**{**dict(r), "role": Role(r["role"])})


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create_api_key(
    db: Executor,
    *,
    tenant: str,
    role: Role,
    name: str = "",
    actor: str = "system",
    rate_limit_per_s: float | None = None,
    burst: int | None = None,
    key: str | None = None,
) -> tuple[str, ApiKey]:
    """A new key: ``(secret, record)``. The secret is returned once and never stored. ``key`` imports a given
    secret (``shardwheel dev`` prints a fixed one); it must be at least as long as a generated key."""
    if key is not None and len(key) < len(KEY_PREFIX) + 43:
        raise SpecError("key", "too short to be a key: at least 46 characters")
    secret = key or generate_api_key()
    async with transaction(db) as conn:
        row = await conn.fetchrow(
            f"INSERT INTO api_keys (id, key_hash, prefix, tenant, role, name, rate_limit_per_s, burst)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}",
            new_job_id(), hash_api_key(secret), secret[:SHOWN_PREFIX_CHARS], tenant, role.value, name,
            rate_limit_per_s, burst,
        )  # fmt: skip
        record = _key(row)
        await insert_audit(conn, shard=CLUSTER_SHARD, tenant=tenant, actor=actor, action="api_key.create",
                           detail={"key_id": str(record.id), "role": role.value, "name": name})  # fmt: skip
    return secret, record


async def lookup_api_key(db: Executor, key: str) -> ApiKey | None:
    """The active (unrevoked) key with this secret, or None."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_api_key(key)
    )
    return None if row is None else _key(row)


async def list_api_keys(
    db: Executor, *, tenant: str | None = None, include_revoked: bool = False
) -> list[ApiKey]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM api_keys WHERE ($1::text IS NULL OR tenant = $1)"
        " AND ($2 OR revoked_at IS NULL) ORDER BY created_at, id",
        tenant, include_revoked,
    )  # fmt: skip
    return [_key(r) for r in rows]


async def revoke_api_key(
    db: Executor, key_id: uuid.UUID, *, tenant: str | None = None, actor: str = "system"
) -> bool:
    """Revoke a key (of ``tenant``, if given); False if there was no such active key."""
    async with transaction(db) as conn:
        row = await conn.fetchrow(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)"
            " AND revoked_at IS NULL RETURNING tenant",
            key_id, tenant,
        )  # fmt: skip
        if row is None:
            return False
        await insert_audit(conn, shard=CLUSTER_SHARD, tenant=row["tenant"], actor=actor, action="api_key.revoke",
                           detail={"key_id": str(key_id)})  # fmt: skip
    return True
