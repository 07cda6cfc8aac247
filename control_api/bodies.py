"""Request bodies read as untrusted JSON: every failure a ``SpecError`` (422 naming what is wrong)."""

from __future__ import annotations

from typing import Any

from litestar import Request

from protocol.errors import SpecError
from protocol.jobs import decode_untrusted

__all__ = ["json_object"]


async def json_object(request: Request[Any, Any, Any], what: str) -> dict[str, Any]:
    """The body as a JSON object; ``what`` says what it should be, for the error."""
    doc = decode_untrusted(await request.body())
    if not isinstance(doc, dict):
        raise SpecError("", f"expected {what}")
    return doc
