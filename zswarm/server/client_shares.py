"""Client shares: how much of one server a single client may hold (issue 14, cache squatting).

A client is known by its connection identity (the ZeroMQ routing id: one per connection) and,
when it connects from another machine, by its IP as well, so that opening many connections from
one address buys nothing (IPv6: one /64). Loopback addresses are not counted as one client: they are the
operator's own machine (and every client of a test swarm).

Two bounds, both pure functions over the sessions a server holds:
- at most `max_sessions` open sessions per client, always;
- a share of the cache budget that binds only while others wait: a client may fill an idle
  server, but when another client, itself within its share, cannot get room, the newest sessions
  of clients holding more than their share are ended until the newcomer fits. So a squatter that
  opens one session as long as the whole budget keeps a second client out for no longer than the
  second client's open takes.
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Iterable, Sequence

ClientKey = tuple  # ("identity", bytes) or ("ip", str)


def client_keys(identity: bytes, address: str) -> tuple[ClientKey, ...]:
    """What a session is counted against: its connection, and its IP (an IPv6 one by its /64, what
    one host is usually given) unless that is this machine's."""
    keys: list[ClientKey] = [("identity", bytes(identity))]
    source = _source(address)
    if source:
        keys.append(("ip", source))
    return tuple(keys)


def _source(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP libzmq gave us: count it as it is
    ip = getattr(ip, "ipv4_mapped", None) or ip
    if ip.is_loopback:
        return ""
    return str(ip) if ip.version == 4 else str(ipaddress.ip_network(f"{ip}/64", strict=False))


def holdings(sessions: Iterable, keys: Sequence[ClientKey]) -> tuple[int, int]:
    """(sessions, cache tokens) held by the client with these keys: the most over any one key."""
    count: collections.Counter = collections.Counter()
    tokens: collections.Counter = collections.Counter()
    for session in sessions:
        for key in session.client:
            if key in keys:
                count[key] += 1
                tokens[key] += session.tokens_reserved
    return max(count.values(), default=0), max(tokens.values(), default=0)


def share_victims(sessions: Sequence, opener: Sequence[ClientKey], share_tokens: int, need: int,
                  free: int) -> list:
    """The sessions to end so that `need` tokens fit beside `free`: newest first, only of other
    clients holding more than `share_tokens`, and only while they still do; never one whose step
    is running (its lock is held). `sessions` are in the order they were opened."""
    held: collections.Counter = collections.Counter()
    for session in sessions:
        for key in session.client:
            held[key] += session.tokens_reserved
    victims = []
    for session in reversed(sessions):
        if free >= need:
            break
        if set(session.client) & set(opener) or session.lock.locked():
            continue
        if any(held[key] > share_tokens for key in session.client):
            victims.append(session)
            free += session.tokens_reserved
            for key in session.client:
                held[key] -= session.tokens_reserved
    return victims if free >= need else []
