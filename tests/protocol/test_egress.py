"""The egress policy: each refused address class, IPv4-mapped forms, localhost names, the allow-list, and its
use at validation (a literal address or localhost in a URL is refused naming the field; no DNS)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.egress import STRICT, EgressPolicy
from protocol.errors import SpecError
from protocol.jobs import decode_job_spec

REFUSED = [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.5", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("255.255.255.255", "broadcast"),
    ("100.64.0.1", "non-public"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("::ffff:10.1.2.3", "private"),
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8", "93.184.216.34"]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_each_internal_address_class_is_refused(address: str, kind: str) -> None:
    reason = STRICT.refused_address(ipaddress.ip_address(address))
    assert reason is not None and reason.startswith(f"{kind} address")
    assert STRICT.refused_host(address) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert STRICT.refused_host(address) is None


def test_localhost_names_are_loopback_and_other_names_wait_for_resolution() -> None:
    for name in ("localhost", "api.localhost", "localhost."):
        assert STRICT.refused_host(name) == f"loopback name {name}"
    assert STRICT.refused_host("example.com") is None
    assert EgressPolicy.of([], dev=True).refused_host("localhost") is None


def test_the_allow_list_opens_exactly_its_networks() -> None:
    policy = EgressPolicy.of(["10.1.0.0/16", "fd00:1::/32"])
    assert policy.refused_host("10.1.200.3") is None and policy.refused_host("fd00:1::5") is None
    assert policy.refused_host("::ffff:10.1.0.1") is None  # the mapped form of an allowed address
    assert policy.refused_host("10.2.0.1") == "private address 10.2.0.1"
    assert policy.refused_host("127.0.0.1") == "loopback address 127.0.0.1"
    dev = EgressPolicy.of([], dev=True)
    assert dev.refused_host("127.0.0.1") is None and dev.refused_host("::1") is None
    assert dev.refused_host("169.254.169.254") is not None
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not a network"):
        EgressPolicy.of(["10.0.0.0/33"])


_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
_nets = st.lists(st.tuples(_v4, st.integers(8, 32)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)),
                 max_size=3)  # fmt: skip


@settings(max_examples=500)
@given(ip=_v4 | _v6 | _v4.map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")), nets=_nets)
def test_refused_exactly_when_not_global_unicast_and_not_allowed(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: list[ipaddress.IPv4Network]
) -> None:
    """Against a reference: what is refused is what is not a global unicast address (judging an IPv4-mapped
    address as its IPv4 one) and lies in no allowed network."""
    policy = EgressPolicy(nets)
    judged = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    public = judged.is_global and not judged.is_multicast and judged != ipaddress.IPv4Address("255.255.255.255")
    allowed = any(judged in n for n in nets if n.version == judged.version)
    assert (policy.refused_address(ip) is None) == (public or allowed)


def _doc(url: str, webhook: str | None = None) -> bytes:
    return json.dumps({"name": "x", "schedule": {"kind": "every", "every": "5s"}, "target": {"url": url},
                       "alert_webhook": webhook}).encode()  # fmt: skip


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data", "http://127.0.0.1:5432/", "http://[::1]/", "http://localhost:5432/",
     "https://[::ffff:127.0.0.1]/", "http://10.0.0.1/", "http://0.0.0.0/"],
)  # fmt: skip
def test_validation_refuses_internal_targets_naming_the_field(url: str) -> None:
    with pytest.raises(SpecError) as info:
        decode_job_spec(_doc(url))
    assert info.value.field == "target.url" and "target not allowed" in info.value.problem
    with pytest.raises(SpecError) as info:
        decode_job_spec(_doc("https://example.com/", webhook=url))
    assert info.value.field == "alert_webhook"


def test_validation_follows_the_policy_it_is_given() -> None:
    assert decode_job_spec(_doc("http://127.0.0.1:9/"), EgressPolicy.of([], dev=True)).target.url
    assert decode_job_spec(_doc("http://10.1.2.3/"), EgressPolicy.of(["10.1.0.0/16"])).target.url
    assert decode_job_spec(_doc("https://example.com/")).target.url  # a name: checked once resolved
