"""Address diversity: how many contacts one address may stand for (issue 14, routing-table poisoning).

One UDP socket can claim any number of node ids; Kademlia alone would then let it fill a key's
whole set of closest nodes and hide the key's real holders. So, as trusted implementations do
(eMule's Kad, libtorrent's restrict_routing_ips), a routing-table bucket and a lookup's set of a
key's closest nodes hold at most `per_endpoint` ids per ip:port, `per_ip` per public IP and
`per_subnet` per public /24 (IPv6: /64), the closest ones first. Loopback and private addresses are
only limited per endpoint (anything not globally routable): they are this machine or its LAN (test swarms, a cluster behind one
NAT), where many nodes share one IP by design.

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
def _groups(ip: str | None, port: int | None) -> tuple:
    """The groups a contact at ip:port counts against: (endpoint, ip, subnet); None where unlimited."""
    if ip is None:
        return (None, None, None)  # this node itself
    endpoint = f"{ip}:{port}"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return (endpoint, None, None)
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    if not address.is_global:  # loopback, private, link-local, shared (CGNAT) and reserved
        return (endpoint, None, None)
    prefix = 24 if address.version == 4 else 64
    subnet = str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
    return (endpoint, str(address), subnet)


def groups_of(node) -> tuple:
    return _groups(getattr(node, "ip", None), getattr(node, "port", None))


def fits(node, chosen: Iterable, limits: AddressLimits) -> bool:
    """May `node` join `chosen` without any of its address groups going over its limit?"""
    caps = (limits.per_endpoint, limits.per_ip, limits.per_subnet)
    mine = groups_of(node)
    counts = [0, 0, 0]
    for other in chosen:
        if other.id == node.id:
            continue
        for i, (a, b) in enumerate(zip(mine, groups_of(other))):
            if a is not None and a == b:
                counts[i] += 1
    return all(count < cap for count, cap in zip(counts, caps))


def diverse(nodes: Iterable, count: int, limits: AddressLimits) -> list:
    """The first `count` of `nodes` (given closest first) that keep every address group within its
    limit: one socket claiming a thousand ids is one contact here."""
    chosen: list = []
    tally: dict = {}
    caps = (limits.per_endpoint, limits.per_ip, limits.per_subnet)
    for node in nodes:
        if len(chosen) >= count:
            break
        keys = [(i, g) for i, g in enumerate(groups_of(node)) if g is not None]
        if any(tally.get(key, 0) >= caps[key[0]] for key in keys):
            continue
        for key in keys:
            tally[key] = tally.get(key, 0) + 1
        chosen.append(node)
    return chosen
