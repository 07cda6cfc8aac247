"""Connections: the pool every store function takes, and the two helpers that turn "a pool or a connection"
into one connection or one transaction.

Rules:
- Every store function takes an ``Executor``: an ``asyncpg.Pool``, a ``Connection`` or a pooled connection.
  Single-statement operations run on it directly; multi-statement ones go through ``transaction(db)``, which
  acquires a connection from a pool (or uses the one given) and opens a transaction on it (a savepoint if the
  caller already holds one, so callers can group store calls into their own transaction).
- The store never depends on the JSON codecs registered here: it passes JSON as text (``$1::text::jsonb``)
  and reads it as text (``col::text``) decoded by a typed msgspec decoder, one pass from bytes to Structs.
  The codecs (msgspec, both directions) are for everyone else's ad-hoc queries on the pool.
- Sessions run with ``TimeZone=UTC`` so that timestamps printed by the server and day boundaries agree with
  the partitioning (UTC days).
- Connection failures become ``InfrastructureError`` with the DSN's password removed.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from protocol.errors import InfrastructureError

__all__ = ["Connection", "Executor", "connect", "connection", "create_pool", "redact_dsn", "transaction"]

Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

_SERVER_SETTINGS = {"application_name": "shardwheel", "TimeZone": "UTC"}


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, schema="pg_catalog", encoder=_encode_json, decoder=msgspec.json.decode, format="text"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset without asyncpg's default reset query (``RESET ALL; UNLISTEN *; ...``): a round trip on every
    release, ~5 % of a node's CPU while loading shards. Nothing here keeps session state (advisory locks are
    transaction-scoped, no LISTEN, no SET), and asyncpg still rolls back an unfinished transaction."""


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for error messages and logs."""
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return "<unparsable DSN>"
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    """A pool whose connections decode/encode json and jsonb with msgspec; extra kwargs go to asyncpg."""
    kwargs.setdefault("server_settings", _SERVER_SETTINGS)
    kwargs.setdefault("timeout", 10)
    kwargs.setdefault("reset", _keep_session)
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection, **kwargs
        )
    except _CONNECT_ERRORS as e:
        raise InfrastructureError(f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {e}") from None
    assert pool is not None  # create_pool only returns None when awaited without a loop, never here
    return pool


async def connect(dsn: str, *, timeout: float = 10) -> asyncpg.Connection:
    """One plain connection (the command line's migrations and keys); ``InfrastructureError`` if none."""
    try:
        return await asyncpg.connect(dsn, timeout=timeout)
    except _CONNECT_ERRORS as e:
        raise InfrastructureError(f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {e}") from None


_CONNECT_ERRORS = (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError)


@asynccontextmanager
async def connection(db: Executor) -> AsyncIterator[Connection]:
    """One connection: acquired from ``db`` if it is a pool (and released after), else ``db`` itself."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


@asynccontextmanager
async def transaction(db: Executor) -> AsyncIterator[Connection]:
    """A connection inside a READ COMMITTED transaction (a savepoint if one is already open on it)."""
    async with connection(db) as conn, conn.transaction():
        yield conn
