"""Opaque page cursors: the sort key of a page's last row, as URL-safe base64 of its JSON. A cursor that does
not decode to the list's key is a ``SpecError`` naming ``cursor``."""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

import msgspec

from protocol.errors import SpecError

__all__ = ["decode_cursor", "encode_cursor"]

T = TypeVar("T")


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode().rstrip("=")


def decode_cursor(cursor: str, key_type: type[T]) -> T:
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), type=key_type)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise SpecError("cursor", "not a cursor of this list: pass next_cursor as it came") from None
