"""The egress policy: which addresses a job's target (or an alert webhook) may reach. Pure.

Rules:
- Refused unless an allowed network contains them: loopback (127/8, ::1), private (10/8, 172.16/12,
  192.168/16, fc00::/7), link-local (169.254/16 — the cloud metadata address 169.254.169.254 among them —,
  fe80::/10), unspecified (0.0.0.0, ::), multicast, broadcast, and every other address that is not globally
  reachable (shared 100.64/10, documentation and benchmark ranges, reserved ones): ``ipaddress``'s
  ``is_global``. An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is judged as the IPv4 address it maps.
- Two checks, one policy: at validation, a URL whose host is a literal address, or ``localhost`` (or a name
  under ``.localhost``), is refused naming the field — no DNS there, so validation stays pure and fast; at
  firing time the node resolves the name, refuses it if any address is refused, and connects to an address it
  checked (``scheduler_node.dispatch.connection``), so a name that re-resolves elsewhere (DNS rebinding) gains
  nothing.
- The allowed networks are one cluster-wide setting in PostgreSQL (``cluster.allowed_target_nets``, set by
  ``shardwheel migrate --allow-target-net CIDR``), so every node and API replica agree; dev mode adds
  127.0.0.0/8 and ::1.

Example::

    policy = EgressPolicy.of(["10.1.0.0/16"])
    policy.refused_host("10.1.2.3")        # None: allowed
    policy.refused_host("169.254.169.254") # 'link-local address 169.254.169.254'
    policy.refused_host("example.com")     # None: checked after resolution, at firing time
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

__all__ = ["DEV_NETS", "STRICT", "EgressPolicy", "IpNetwork"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEV_NETS: Final = ("127.0.0.0/8", "::1/128")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _kind(ip: IpAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None if it is one."""
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip == _BROADCAST:
        return "broadcast"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


class EgressPolicy:
    """Refused address classes, minus the allowed networks. Immutable; build another to change it."""

    __slots__ = ("allowed",)

    def __init__(self, allowed: Iterable[IpNetwork] = ()) -> None:
        self.allowed: tuple[IpNetwork, ...] = tuple(allowed)

    @classmethod
    def of(cls, cidrs: Iterable[str], *, dev: bool = False) -> EgressPolicy:
        """From CIDR strings (``ValueError`` naming a bad one); ``dev`` adds the loopback networks."""
        nets = []
        for text in [*cidrs, *(DEV_NETS if dev else ())]:
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"'{text}' is not a network (CIDR such as 10.0.0.0/8)") from None
        return cls(nets)

    def refused_address(self, ip: IpAddress) -> str | None:
        """Why the node may not connect to ``ip`` ("private address 10.0.0.5"), or None if it may."""
        judged = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        kind = _kind(judged)
        if kind is None or any(judged in net for net in self.allowed if net.version == judged.version):
            return None
        return f"{kind} address {ip}"

    def refused_host(self, host: str) -> str | None:
        """Validation's check of a URL's host (lower case, no brackets): a literal address by its class,
        ``localhost`` as loopback; any other name passes here and is checked once resolved."""
        name = host.rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            return self.refused_address(ipaddress.ip_address("127.0.0.1")) and f"loopback name {host}"
        if ":" not in name and not name.replace(".", "").isdigit():
            return None  # a name, not an address literal (v4 literals are digits and dots, v6 ones have ':')
        try:
            ip = ipaddress.ip_address(name.partition("%")[0])  # a zone id (fe80::1%eth0) is not part of it
        except ValueError:
            return None
        return self.refused_address(ip)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EgressPolicy) and set(self.allowed) == set(other.allowed)

    def __hash__(self) -> int:
        return hash(frozenset(self.allowed))

    def __repr__(self) -> str:
        return f"EgressPolicy(allowed={[str(n) for n in self.allowed]})"


STRICT: Final = EgressPolicy()
