"""Authentication and roles: ``Authorization: Bearer <api key>``, one tenant and one role per key.

Rules:
- A key is looked up by its hash (``store.lookup_api_key``); answers, found or not, are cached for
  ``CACHE_S`` (5 s), so a revocation takes effect within 5 s and a flood of bad keys costs one read per key
  per 5 s.
- Roles nest: ``admin`` can do what ``writer`` can, which can do what ``reader`` can. Each handler names the
  least role in its ``opt`` (``opt=WRITER``); a key below it gets 403, no or an unknown key 401.
- A key sees its own tenant only: every read filters by the key's tenant, so another tenant's job is 404.
- Then the key's rate limit (``limits.RateLimiter``): over it, 429 with ``Retry-After``.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, TooManyRequestsException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from protocol.errors import SpecError
from scheduler_node.store import ApiKey, Role, lookup_api_key

__all__ = ["ADMIN", "CACHE_S", "READER", "WRITER", "KeyAuthentication"]

CACHE_S = 5.0
_RANK = {Role.READER: 0, Role.WRITER: 1, Role.ADMIN: 2}
_UNAUTHENTICATED = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})


class KeyAuthentication(AbstractAuthenticationMiddleware):
    """Sets ``connection.user`` to the request's ``ApiKey``; 401 without a valid one."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        if connection.url.path in _UNAUTHENTICATED or connection.url.path.startswith("/docs"):
            return AuthenticationResult(user=None, auth=None)
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException("missing API key: send Authorization: Bearer <key>")
        for name, value in connection.query_params.multi_items():
            if "\x00" in value:  # PostgreSQL text cannot hold it: refused here, for every route at once
                raise SpecError(name, "contains a NUL character")
        state = connection.app.state
        key = await _cached_lookup(state.pool, state.key_cache, token.strip())
        if key is None:
            raise NotAuthorizedException("unknown or revoked API key")
        wait = state.limiter.retry_after(key.id, key.rate_limit_per_s, key.burst)
        if wait:
            state.metrics.rate_limited.inc()
            raise TooManyRequestsException(f"key {key.prefix}... is over its rate limit; retry in {wait} s",
                                           headers={"retry-after": str(wait)})  # fmt: skip
        need: Role = connection.route_handler.opt.get("role", Role.ADMIN)  # a handler that names none: admins
        if _RANK[Role(key.role)] < _RANK[need]:
            raise PermissionDeniedException(f"this needs a {need.value} key")
        return AuthenticationResult(user=key, auth=token)


async def _cached_lookup(pool: asyncpg.Pool, cache: dict[str, tuple[float, ApiKey | None]],
                         token: str) -> ApiKey | None:  # fmt: skip
    now = time.monotonic()
    hit = cache.get(token)
    if hit is not None and now - hit[0] < CACHE_S:
        return hit[1]
    key = await lookup_api_key(pool, token)
    if len(cache) > 10_000:
        cache.clear()  # bounded: a flood of random keys cannot grow it without end
    cache[token] = (now, key)
    return key


def _least(role: Role) -> dict[str, Role]:
    """A handler's ``opt``: the least role that may call it (checked in ``KeyAuthentication``, not by route
    guards: Litestar copies the handler for every guard call, a tenth of a cheap request's CPU)."""
    return {"role": role}


READER = _least(Role.READER)
WRITER = _least(Role.WRITER)
ADMIN = _least(Role.ADMIN)
