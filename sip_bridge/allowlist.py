"""Source address allowlist (IP addresses and CIDR networks) for inbound SIP."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from sip_bridge.message import Addr

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressAllowlist:
    """``AddressAllowlist(["10.0.0.0/8", "192.0.2.7"])(("10.1.2.3", 5060)) -> True``.

    An empty list allows nobody; pass ``None`` as the UA's ``is_allowed`` to allow everyone.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        networks: list[IpNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(f"bad allowlist entry {entry!r}: {exc}") from None
        self.networks = tuple(networks)

    def __call__(self, addr: Addr) -> bool:
        try:
            ip = ipaddress.ip_address(addr[0].strip("[]"))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)
