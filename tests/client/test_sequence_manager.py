"""SequenceManager on synthetic swarms: bans never remove the last server of a block, filters
apply, routes come from the records, a dead last server fails its probe."""
import asyncio

import pytest

from zswarm.swarm_info import ServerRecord, ServerState
from wire import MockTransport
from zswarm.client.config import ClientConfig
from zswarm.client.failures import ServerUnavailable
from zswarm.client.sequence_manager import SequenceManager
from zswarm.errors import NoRouteError


async def _pong(request):
    return {}, []


def _record(peer, start, end, **kw):
    return ServerRecord(peer_id=peer, address=f"tcp://{peer}:1", model_id="m", start=start, end=end,
                        state=kw.pop("state", ServerState.ONLINE), inference_rps=kw.pop("rps", 100.0),
                        throughput=100.0, cache_tokens_left=kw.pop("cache", 10_000), **kw)


def _manager(records, alive=None, **config):
    transport = MockTransport()
    for rec in records:
        if alive is None or rec.peer_id in alive:
            transport.add_server(rec.address, {"ping": _pong})
    num_blocks = max(r.end for r in records)

    async def fetch():
        blocks = [{} for _ in range(num_blocks)]
        for rec in records:
            for b in range(rec.start, rec.end):
                blocks[b][rec.peer_id] = rec
        return blocks

    cfg = ClientConfig(**{"ping_timeout": 0.5, **config})
    return SequenceManager(cfg, model_id="m", num_blocks=num_blocks, transport=transport, fetch_records=fetch)


def test_a_banned_server_is_avoided_when_another_holds_its_blocks():
    async def main():
        manager = _manager([_record("a", 0, 4), _record("b", 0, 4)])
        await manager.update()
        manager.on_failure("a")
        route = await manager.make_inference_route(0, 4)
        assert [s.peer_id for s in route] == ["b"]
    asyncio.run(main())


def test_a_ban_never_removes_the_last_server_of_a_block():
    async def main():
        manager = _manager([_record("a", 0, 2), _record("b", 2, 4), _record("c", 2, 4)])
        await manager.update()
        manager.on_failure("a")
        manager.on_failure("b")
        peers = {c.peer_id: (c.start, c.end) for c in manager.candidates(0, 4)}
        assert peers == {"a": (0, 2), "c": (2, 4)}   # a stays as the last of 0-1; b has a stand-in
        route = await manager.make_inference_route(0, 4)   # a answers its probe, so it is used
        assert [(s.peer_id, s.start, s.end) for s in route] == [("a", 0, 2), ("c", 2, 4)]
    asyncio.run(main())


def test_a_dead_last_server_fails_its_probe_instead_of_being_routed_through():
    async def main():
        manager = _manager([_record("a", 0, 2), _record("b", 2, 4)], alive={"b"})
        await manager.update()           # the first ping already bans a
        assert manager.bans.is_banned("a")
        with pytest.raises(ServerUnavailable, match="last one left for blocks 0:2"):
            await manager.make_inference_route(0, 4)
    asyncio.run(main())


def test_blocked_offline_and_foreign_servers_are_not_candidates():
    async def main():
        records = [_record("a", 0, 4), _record("b", 0, 4, state=ServerState.JOINING), _record("c", 0, 4),
                   _record("d", 0, 4)]
        records[3].model_id = "other"
        manager = _manager(records, blocked_servers=("c",))
        await manager.update()
        assert [c.peer_id for c in manager.candidates(0, 4)] == ["a"]
        only = _manager(records, allowed_servers=("c",))
        await only.update()
        assert [c.peer_id for c in only.candidates(0, 4)] == ["c"]
    asyncio.run(main())


def test_candidates_are_cut_to_the_requested_range_and_know_their_cache_room():
    async def main():
        manager = _manager([_record("a", 0, 6, cache=100), _record("b", 3, 8, cache=10)])
        await manager.update()
        found = {c.peer_id: c for c in manager.candidates(2, 5, tokens_needed=50)}
        assert (found["a"].start, found["a"].end, found["a"].cache_room) == (2, 5, True)
        assert (found["b"].start, found["b"].end, found["b"].cache_room) == (3, 5, False)
        assert found["a"].rtt_from_client is not None   # pinged on update
    asyncio.run(main())


def test_blocks_nobody_serves_raise_no_route_error_naming_them():
    async def main():
        manager = _manager([_record("a", 0, 2), _record("b", 3, 5)])
        await manager.update()
        with pytest.raises(NoRouteError, match="blocks 2:3 of m are served by no one"):
            await manager.make_inference_route(0, 5)
    asyncio.run(main())


def test_measured_rtt_steers_the_route_away_from_a_far_server():
    async def main():
        async def far_pong(request):
            await asyncio.sleep(0.1)
            return {}, []

        manager = _manager([_record("near", 0, 4), _record("far", 0, 4, rps=1000.0)])
        manager.transport.add_server("tcp://far:1", {"ping": far_pong})
        await manager.update()
        assert manager.rtts["far"] > manager.rtts["near"]
        route = await manager.make_inference_route(0, 4)
        assert [s.peer_id for s in route] == ["near"]
    asyncio.run(main())


def test_a_server_without_cache_room_for_the_session_is_avoided():
    async def main():
        manager = _manager([_record("full", 0, 4, cache=100, rps=1000.0), _record("roomy", 0, 4, cache=10_000)])
        await manager.update()
        route = await manager.make_inference_route(0, 4, batch_size=2, max_length=512)
        assert [s.peer_id for s in route] == ["roomy"]
        small = await manager.make_inference_route(0, 4, batch_size=1, max_length=50)
        assert [s.peer_id for s in small] == ["full"]     # faster, and room enough for this one
    asyncio.run(main())


def test_a_server_that_stops_answering_pings_fails_a_call_before_its_timeout():
    async def main():
        async def hang(request):
            await asyncio.sleep(60)

        manager = _manager([_record("a", 0, 4)], liveness_interval_s=0.05, ping_timeout=0.05)
        manager.transport.add_server("tcp://a:1", {"ping": hang, "inference_step": hang})
        from wire import RequestTimeout
        with pytest.raises(RequestTimeout, match="stopped answering pings"):
            await manager.call("tcp://a:1", "inference_step", {}, timeout=30)
    asyncio.run(main())


def test_a_record_missing_from_one_fetch_is_kept_once_and_an_offline_one_is_dropped_at_once():
    """A lookup that came back short (a DHT node killed a moment ago) must not drop a live
    replica from the view; a record missing twice in a row, or shown OFFLINE, goes."""
    a, b = _record("a", 0, 2), _record("b", 0, 2)
    manager = _manager([a, b])
    fetches = iter([[{"a": a, "b": b}] * 2, [{"a": a}] * 2, [{"a": a}] * 2,
                    [{"a": a, "b": b}] * 2, [{"a": a, "b": _record("b", 0, 2, state=ServerState.OFFLINE)}] * 2])

    async def fetch():
        return next(fetches)

    manager.fetch_records = fetch

    async def views():
        seen = []
        for _ in range(5):
            await manager.update()
            seen.append(sorted(manager.blocks[0]))
        return seen

    assert asyncio.run(views()) == [["a", "b"], ["a", "b"], ["a"], ["a", "b"], ["a"]]
