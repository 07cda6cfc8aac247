"""``Idempotency-Key`` as the IETF draft has it: the same key and request answer what the first answered; the
key with another request is 422 (``KeyReused``). Records are the tenant's, kept 24 h (``store.idempotency``).

The request's hash covers the method, the path and the body, so a key names one request exactly.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec
from litestar import Request

from protocol.errors import SpecError

__all__ = ["IdempotencyKey", "idempotency_of"]

_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # no spaces: the router's own request ids have one


class IdempotencyKey(msgspec.Struct, frozen=True):
    key: str
    request_hash: str

    def for_item(self, item: str) -> str:
        """The key of one write of a bulk request (within the 255 characters a key may have)."""
        return f"bulk {hashlib.sha256(self.key.encode()).hexdigest()[:40]} {item}"


async def idempotency_of(request: Request[Any, Any, Any]) -> IdempotencyKey | None:
    given = request.headers.get("idempotency-key")
    if given is None:
        return None
    if not _KEY.fullmatch(given):
        raise SpecError("Idempotency-Key", "must be 1-255 printable ASCII characters without spaces")
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode() + await request.body())
    return IdempotencyKey(given, digest.hexdigest())
