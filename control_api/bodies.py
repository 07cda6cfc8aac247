"""Request bodies read as untrusted JSON: every failure a ``SpecError`` (422 naming what is wrong)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request

from protocol.errors import SpecError

__all__ = ["json_object"]


async def json_object(request: Request[Any, Any, Any], what: str) -> dict[str, Any]:
    """The body as a JSON object; ``what`` says what it should be, for the error."""
    try:
        doc = msgspec.json.decode(await request.body())
    except msgspec.DecodeError as e:
        raise SpecError("", f"malformed JSON: {e}") from None
    except RecursionError:
        raise SpecError("", "JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise SpecError("", f"expected {what}")
    return doc
