"""Address diversity: how many contacts one address may stand for (issue 14, routing-table poisoning).

One UDP socket can claim any number of node ids; Kademlia alone would then let it fill a key's
whole set of closest nodes and hide the key's real holders. So, as trusted implementations do
(eMule's Kad, libtorrent's restrict_routing_ips), a routing-table bucket and a lookup's set of a
key's closest nodes hold at most `per_endpoint` ids per ip:port, `per_ip` per public IP and
`per_subnet` per public /24 (IPv6: /64), the closest ones first. Addresses that are not globally
routable (loopback, private, link-local) are only limited per endpoint: they are this machine or
its LAN (test swarms, a cluster behind one NAT), where many nodes share one IP by design.

Pure functions over kademlia Nodes; routing.py and lookup.py apply them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable


@dataclass(frozen=True)
class AddressLimits:
    per_endpoint: int = 1
    per_ip: int = 2
    per_subnet: int = 4


@lru_cache(maxsize=65536)
def address_groups(ip: str | None, port: int | None) -> tuple:
    """The groups a contact at ip:port counts against, as (kind, name) keys: its endpoint, and for
    a public address its IP and subnet; () for this node itself (no address)."""
    if ip is None:
        return ()
    endpoint = (0, f"{ip}:{port}")
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return (endpoint,)
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    if not address.is_global:  # loopback, private, link-local, shared (CGNAT) and reserved
        return (endpoint,)
    prefix = 24 if address.version == 4 else 64
    return (endpoint, (1, str(address)), (2, str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))))


def groups_of(node) -> tuple:
    return address_groups(node.ip, node.port)


def _caps(limits: AddressLimits) -> tuple:
    return (limits.per_endpoint, limits.per_ip, limits.per_subnet)


def fits(node, chosen: Iterable, limits: AddressLimits) -> bool:
    """May `node` join `chosen` without any of its address groups going over its limit?"""
    caps = _caps(limits)
    counts: dict = {}
    for other in chosen:
        if other.id != node.id:
            for key in groups_of(other):
                counts[key] = counts.get(key, 0) + 1
    return all(counts.get(key, 0) < caps[key[0]] for key in groups_of(node))


def diverse(nodes: Iterable, count: int, limits: AddressLimits) -> list:
    """The first `count` of `nodes` (given closest first) that keep every address group within its
    limit: one socket claiming a thousand ids is one contact here."""
    chosen: list = []
    tally: dict = {}
    caps = _caps(limits)
    for node in nodes:
        keys = address_groups(node.ip, node.port)
        for key in keys:
            if tally.get(key, 0) >= caps[key[0]]:
                break
        else:
            for key in keys:
                tally[key] = tally.get(key, 0) + 1
            chosen.append(node)
            if len(chosen) >= count:
                break
    return chosen
