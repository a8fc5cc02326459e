"""Joining a swarm, and refreshing the routing table (Kademlia sections 2.3 and 4.3).

A node joins by pinging its initial peers, then looking up its own id: that fills its routing
table and introduces it to the nodes closest to it, which hand it the entries it now holds.
kademlia's own bootstrap (NodeSpiderCrawl) asks `alpha` nodes per round and waits for all of
them, so every round that meets a departed node -- live nodes keep listing one until they ask it
something -- waited a full RPC timeout, and a join took a few such rounds. Here the lookup is
MultiKeyLookup: requests overlap, a silent node is passed over after a few median reply times
(lookup.py), contacts known dead are never asked (nor handed out, see
SwarmProtocol.live_neighbors), and nothing waits for a timeout to end. Requests to departed nodes
time out in the background, which marks them dead and drops them from the routing table.
"""

from __future__ import annotations

import asyncio
import logging

from kademlia.node import Node

from dht.errors import BadRequest
from dht.lookup import MultiKeyLookup
from dht.messages import check_node_id
from dht.protocol import SwarmProtocol

log = logging.getLogger(__name__)


async def ping_seeds(protocol: SwarmProtocol, addrs: list[tuple[str, int]]) -> list[Node]:
    """Ping every initial peer at once; return the nodes that answered. Once one has answered,
    the others get a grace period (`give_up_factor` times its reply time, at least
    `min_give_up_s`), not the whole RPC timeout: a departed seed must not hold up the join."""
    config = protocol.config
    loop = asyncio.get_running_loop()
    sent = loop.time()
    pending = {protocol.ping(addr, protocol.source_node.id): addr for addr in addrs}
    seeds: list[Node] = []
    until = None
    while pending:
        timeout = None if until is None else max(0.0, until - loop.time())
        done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            break  # grace period over; the rest time out on their own
        for future in done:
            addr = pending.pop(future)
            ok, reply = future.result()
            if not ok:
                continue
            try:
                seeds.append(Node(check_node_id(reply), addr[0], addr[1]))
            except BadRequest as exc:
                protocol.log_once(addr, "ping reply", str(exc))
                continue
            if until is None:
                grace = max(config.min_give_up_s, config.give_up_factor * (loop.time() - sent))
                until = loop.time() + min(config.rpc_timeout, grace)
    return seeds


async def join(protocol: SwarmProtocol, addrs: list[tuple[str, int]]) -> list[Node]:
    """Join through `addrs`; return the nodes that answered (empty: nobody did)."""
    seeds = await ping_seeds(protocol, addrs)
    if not seeds:
        return []
    for node in seeds:
        protocol.welcome_if_new(node)
    me = protocol.source_node
    lookups = await MultiKeyLookup(protocol, [me.id], want_entries=False, width=protocol.config.ksize).run()
    answered = {n.id: n for n in seeds}
    answered.update((n.id, n) for n in lookups[me.id].answered.values() if n.id != me.id)
    return list(answered.values())


async def refresh(protocol: SwarmProtocol, ids: list[bytes]) -> None:
    """Look up one id in each stale bucket's range, all in one lookup (Kademlia section 4.3)."""
    if ids:
        await MultiKeyLookup(protocol, list(ids), want_entries=False, width=protocol.config.ksize).run()
