"""Sealed target headers: what is sealed opens only for its tenant, job and header, with any key of the ring;
reads are redacted; "<redacted>" written back keeps the stored value."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import SpecError
from protocol.jobs import SEALED_PREFIX, JobSpec, Target, validate_job_spec
from protocol.schedules import Every
from protocol.sealed import REDACTED, SecretBox, redacted, secrets_key

K1 = "k1=" + base64.b64encode(b"1" * 32).decode()
K2 = "k2=" + base64.b64encode(b"2" * 32).decode()
JOB = "0196a5f0-0000-7000-8000-000000000001"


def spec(**headers: str) -> JobSpec:
    return JobSpec(name="s", schedule=Every("1m"), target=Target(url="https://e.example/", headers=headers))


@given(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs",)), max_size=200))
def test_a_sealed_value_opens_to_itself_and_nothing_of_it_shows(value: str) -> None:
    box = SecretBox.parse(K1)
    sealed = box.seal_headers(spec(Authorization=value), tenant="acme", job_id=JOB)
    stored = sealed.target.headers["Authorization"]
    assert stored.startswith(f"{SEALED_PREFIX}k1:")
    assert len(value) < 8 or value not in stored.removeprefix(f"{SEALED_PREFIX}k1:")  # (a short one may by chance)
    assert box.open_target(sealed.target, tenant="acme", job_id=JOB).headers == {"Authorization": value}
    validate_job_spec(sealed)  # a sealed spec is as valid as its plaintext


def test_a_sealed_value_does_not_open_for_another_job_tenant_or_header() -> None:
    box = SecretBox.parse(K1)
    stored = box.seal_headers(spec(Authorization="Bearer t"), tenant="acme", job_id=JOB).target.headers
    for tenant, job, name in (("globex", JOB, "Authorization"), ("acme", JOB[:-1] + "2", "Authorization"),
                              ("acme", JOB, "X-Other")):  # fmt: skip
        moved = Target(url="https://e.example/", headers={name: stored["Authorization"]})
        with pytest.raises(ValueError, match="does not open"):
            box.open_target(moved, tenant=tenant, job_id=job)


def test_rotation_the_first_key_seals_every_key_opens() -> None:
    old = SecretBox.parse(K1).seal_headers(spec(A="x"), tenant="t", job_id=JOB)
    ring = SecretBox.parse(f"{K2},{K1}")
    assert ring.open_target(old.target, tenant="t", job_id=JOB).headers == {"A": "x"}
    assert ring.seal_headers(spec(A="x"), tenant="t", job_id=JOB).target.headers["A"].startswith("swenc:k2:")
    with pytest.raises(ValueError, match="key 'k1', which --secrets-key does not hold"):
        SecretBox.parse(K2).open_target(old.target, tenant="t", job_id=JOB)
    rewritten = ring.seal_headers(redacted(old), tenant="t", job_id=JOB, stored=old)  # any write re-seals
    assert rewritten.target.headers["A"].startswith("swenc:k2:")
    assert SecretBox.parse(K2).open_target(rewritten.target, tenant="t", job_id=JOB).headers == {"A": "x"}


def test_reads_are_redacted_and_redacted_written_back_keeps_the_stored_value() -> None:
    box = SecretBox.parse(K1)
    stored = box.seal_headers(spec(Authorization="Bearer t", Accept="text/plain"), tenant="t", job_id=JOB)
    shown = redacted(stored)
    assert shown.target.headers == {"Authorization": REDACTED, "Accept": REDACTED}
    again = box.seal_headers(shown, tenant="t", job_id=JOB, stored=stored)
    assert again.target.headers == stored.target.headers  # nothing re-sealed, nothing lost
    changed = box.seal_headers(spec(authorization=REDACTED, Accept="*/*"), tenant="t", job_id=JOB, stored=stored)
    opened = box.open_target(changed.target, tenant="t", job_id=JOB).headers
    assert opened == {"authorization": "Bearer t", "Accept": "*/*"}
    with pytest.raises(SpecError) as e:
        box.seal_headers(spec(X=REDACTED), tenant="t", job_id=JOB, stored=stored)
    assert e.value.field == "target.headers.X"


@pytest.mark.parametrize(("text", "says"), [
    ("nokey", "<id>=<base64"), ("k1=!!!", "not base64"), ("k1=c2hvcnQ=", "5 bytes"), (f"{K1},{K1}", "twice")])
def test_a_bad_key_is_refused_in_one_line(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        SecretBox.parse(text)


def test_outside_dev_mode_a_key_is_required() -> None:
    with pytest.raises(ValueError, match="required outside dev mode"):
        secrets_key(None, dev=False)
    assert secrets_key(None, dev=True).sealing_id == "dev"
