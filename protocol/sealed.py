"""Target headers encrypted at rest: a job's header values are secrets (``Authorization: Bearer ...``).

Rules:
- Every value of ``target.headers`` is sealed by the control API before it is routed (AES-256-GCM from
  ``cryptography``; a fresh 96-bit nonce per value; the associated data binds it to its tenant, job and header
  name, so a sealed value copied into another job or header does not open). Stored as
  ``swenc:<key id>:<base64url(nonce | ciphertext | tag)>``. Names stay readable.
- Only a node opens them, when it builds the job's request in memory. Reads never show them: the API answers
  ``"<redacted>"`` for every value (``redacted``), in a job, a list and an export alike.
- Writing ``"<redacted>"`` back (a PUT of what a GET answered, a merge patch that keeps the headers) keeps the
  stored value of that header; on a job that has no such header it is refused, naming the header.
- Keys: ``--secrets-key "k2=<base64 32 bytes>,k1=<old>"`` on API replicas and nodes alike. The first seals;
  every one opens (by its id), so a key is rotated by adding the new one first everywhere, then writing the
  jobs again (any write re-seals the values it keeps with the first key), then dropping the old one. Dev mode has a
  built-in key (``DEV_SECRETS_KEY``), never for production.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import SpecError
from .jobs import SEALED_PREFIX, JobSpec, Target

__all__ = ["DEV_SECRETS_KEY", "REDACTED", "SecretBox", "redacted", "secrets_key"]

REDACTED = "<redacted>"
DEV_SECRETS_KEY = "dev=" + base64.b64encode(b"shardwheel dev mode secrets key!").decode()
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class SecretBox:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("no key")
        self.sealing_id = keys[0][0]
        self._aead = {kid: AESGCM(key) for kid, key in keys}

    @classmethod
    def parse(cls, text: str) -> SecretBox:
        """``"k2=<base64>,k1=<base64>"``: ``ValueError`` with a one-line reason naming the key."""
        keys: list[tuple[str, bytes]] = []
        for part in (p.strip() for p in text.split(",")):
            kid, eq, encoded = part.partition("=")
            if not eq or not _KEY_ID.fullmatch(kid):
                raise ValueError("--secrets-key: each key is <id>=<base64 of 32 bytes>, ids of letters, digits, "
                                 "'-' or '_'")  # fmt: skip
            try:
                key = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise ValueError(f"--secrets-key: key '{kid}' is not base64") from None
            if len(key) != 32:
                raise ValueError(f"--secrets-key: key '{kid}' is {len(key)} bytes; AES-256 needs 32 "
                                 "(make one: python -c \"import os,base64;print(base64.b64encode(os.urandom(32))"
                                 ".decode())\")")  # fmt: skip
            if any(kid == k for k, _ in keys):
                raise ValueError(f"--secrets-key: key id '{kid}' is given twice")
            keys.append((kid, key))
        return cls(keys)

    def seal(self, value: str, aad: bytes) -> str:
        nonce = os.urandom(12)
        sealed = self._aead[self.sealing_id].encrypt(nonce, value.encode(), aad)
        return f"{SEALED_PREFIX}{self.sealing_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, value: str, aad: bytes) -> str:
        """The plaintext of a sealed value; ``ValueError`` if no key of this box opens it."""
        kid, _, encoded = value.removeprefix(SEALED_PREFIX).partition(":")
        aead = self._aead.get(kid)
        if aead is None:
            raise ValueError(f"sealed with key '{kid}', which --secrets-key does not hold")
        try:
            raw = base64.urlsafe_b64decode(encoded)
            return aead.decrypt(raw[:12], raw[12:], aad).decode()
        except (binascii.Error, InvalidTag, ValueError):
            raise ValueError(f"a sealed value does not open with key '{kid}' (altered, or another job's)") from None

    @staticmethod
    def _aad(tenant: str, job_id: str, name: str) -> bytes:
        return f"{tenant}\0{job_id}\0{name.lower()}".encode()

    def seal_headers(self, spec: JobSpec, *, tenant: str, job_id: str, stored: JobSpec | None = None) -> JobSpec:
        """``spec`` with every header value sealed; ``"<redacted>"`` keeps the stored (sealed) value of that
        header, a value sealed already (a merge patch's untouched header) stays as it is."""
        if not spec.target.headers:
            return spec
        previous = {n.lower(): v for n, v in (stored.target.headers if stored else {}).items()}
        headers: dict[str, str] = {}
        for name, value in spec.target.headers.items():
            aad = self._aad(tenant, job_id, name)
            if value == REDACTED:
                kept = previous.get(name.lower())
                if kept is None:
                    raise SpecError(f"target.headers.{name}", f"'{REDACTED}' stands for a stored value, and this "
                                    "job has none for this header")  # fmt: skip
                headers[name] = self._resealed(kept, aad)
            elif value.startswith(SEALED_PREFIX) and previous.get(name.lower()) == value:
                headers[name] = self._resealed(value, aad)
            else:
                headers[name] = self.seal(value, aad)
        return _with_headers(spec, headers)

    def _resealed(self, value: str, aad: bytes) -> str:
        """A stored value kept by a write, sealed with the first key (a rotation's old key leaves with it)."""
        if value.removeprefix(SEALED_PREFIX).startswith(f"{self.sealing_id}:"):
            return value
        try:
            return self.seal(self.open(value, aad), aad)
        except ValueError:
            return value  # no key opens it here: kept as stored; the node marks the job broken with why

    def open_target(self, target: Target, *, tenant: str, job_id: str) -> Target:
        """The target as it is sent: its sealed values opened (``ValueError`` if one does not open)."""
        if not any(v.startswith(SEALED_PREFIX) for v in target.headers.values()):
            return target
        opened = {n: self.open(v, self._aad(tenant, job_id, n)) if v.startswith(SEALED_PREFIX) else v
                  for n, v in target.headers.items()}  # fmt: skip
        return msgspec.structs.replace(target, headers=opened)


def _with_headers(spec: JobSpec, headers: dict[str, str]) -> JobSpec:
    return msgspec.structs.replace(spec, target=msgspec.structs.replace(spec.target, headers=headers))


def redacted(spec: JobSpec) -> JobSpec:
    """``spec`` as a read shows it: every header value ``"<redacted>"``."""
    if not spec.target.headers:
        return spec
    return _with_headers(spec, dict.fromkeys(spec.target.headers, REDACTED))


def secrets_key(given: str | None, *, dev: bool) -> SecretBox:
    """The key ring as API replicas and nodes take it: required outside dev mode (``ValueError`` naming the
    option), the built-in one in dev mode when none is given."""
    if not given:
        if not dev:
            raise ValueError("--secrets-key is required outside dev mode (--dev): target headers are encrypted "
                             "with it (SHARDWHEEL_SECRETS_KEY=k1=<base64 of 32 random bytes>)")  # fmt: skip
        given = DEV_SECRETS_KEY
    return SecretBox.parse(given)
