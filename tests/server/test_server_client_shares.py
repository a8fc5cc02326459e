"""Per-client bounds (issue 14, cache squatting), on ServerSessions and the pure client_shares
functions: sessions belong to their opener; one client may hold at most max_client_sessions; while
another client within its share waits, clients over their share lose their newest sessions, and
only as many as the newcomer needs; a client over its own share waits like anyone else."""
import asyncio

import pytest

from zswarm.errors import CacheFullError, ClientLimitError, ForeignSessionError, UnknownSessionError
from zswarm.models.kv_pool import PAGE_TOKENS
from zswarm.server.cache_budget import CacheBudget
from zswarm.server.client_shares import client_keys, holdings
from zswarm.server.sessions import ServerSessions

PAGES = 8  # the budget: 8 pages


def sessions(**kw) -> ServerSessions:
    return ServerSessions(CacheBudget(PAGES * PAGE_TOKENS), idle_timeout=60, **kw)


async def open_as(manager, peer: bytes, pages: int, address: str = "", wait: float = 0.0):
    return await manager.open(start=0, end=2, max_length=pages * PAGE_TOKENS, batch_size=1, wait_timeout=wait,
                              span=None, peer=peer, peer_address=address)


def test_a_client_is_its_connection_and_its_ip_unless_that_is_loopback():
    assert client_keys(b"a", "203.0.113.7") == (("identity", b"a"), ("ip", "203.0.113.7"))
    assert client_keys(b"a", "2001:db8:1:2:3::9")[1] == ("ip", "2001:db8:1:2::/64")
    for local in ("127.0.0.1", "::1", "::ffff:127.0.0.1", ""):
        assert client_keys(b"a", local) == (("identity", b"a"),)


def test_a_session_answers_only_the_connection_that_opened_it():
    async def main():
        manager = sessions()
        s = await open_as(manager, b"owner", 1)
        assert manager.get(s.session_id, b"owner") is s
        with pytest.raises(ForeignSessionError, match="opened by another connection"):
            manager.get(s.session_id, b"stranger")
        with pytest.raises(UnknownSessionError):
            manager.get("0" * 32, b"owner")
    asyncio.run(main())


def test_one_client_may_hold_at_most_max_client_sessions():
    async def main():
        manager = sessions(max_client_sessions=3)
        for _ in range(3):
            await open_as(manager, b"a", 1)
        with pytest.raises(ClientLimitError, match="holds 3 open sessions"):
            await open_as(manager, b"a", 1)
        await open_as(manager, b"b", 1)  # another client is not counted against a's
    asyncio.run(main())


def test_many_connections_from_one_remote_ip_are_one_client():
    async def main():
        manager = sessions(max_client_sessions=2)
        await open_as(manager, b"c1", 1, "198.51.100.9")
        await open_as(manager, b"c2", 1, "198.51.100.9")
        with pytest.raises(ClientLimitError):
            await open_as(manager, b"c3", 1, "198.51.100.9")
        assert holdings(list(manager), client_keys(b"c9", "198.51.100.9")) == (2, 2 * PAGE_TOKENS)
    asyncio.run(main())


def test_a_squatter_over_its_share_loses_its_newest_sessions_only_as_far_as_the_newcomer_needs():
    async def main():
        manager = sessions(client_cache_share=0.5)
        squat = [await open_as(manager, b"squatter", 2) for _ in range(4)]  # the whole budget, idle
        assert manager.budget.free == 0
        newcomer = await open_as(manager, b"newcomer", 3)  # within its share of 4 pages: gets in at once
        assert [s.session_id in {x.session_id for x in manager} for s in squat] == [True, True, False, False]
        with pytest.raises(UnknownSessionError, match="more than its share of the cache"):
            manager.get(squat[3].session_id, b"squatter")
        assert manager.budget.free == PAGE_TOKENS and newcomer.client == (("identity", b"newcomer"),)
    asyncio.run(main())


def test_a_client_within_its_share_is_never_preempted_and_one_over_its_own_share_waits():
    async def main():
        manager = sessions(client_cache_share=0.5)
        await open_as(manager, b"a", 4)  # a's whole share
        await open_as(manager, b"b", 4)  # b's whole share: the budget is full
        with pytest.raises(CacheFullError, match=r"cache full: 2 sessions hold 128 of 128 tokens \(64 of them yours\)"):
            await open_as(manager, b"a", 1, wait=0.05)  # a would be over its share: it waits, and no one is ended
        with pytest.raises(CacheFullError):
            await open_as(manager, b"c", 1, wait=0.05)  # a and b are within their shares: c waits
        assert len(manager) == 2
    asyncio.run(main())


def test_a_step_in_progress_is_never_preempted():
    async def main():
        manager = sessions(client_cache_share=0.5)
        busy = await open_as(manager, b"squatter", PAGES)
        async with busy.lock:
            with pytest.raises(CacheFullError):
                await open_as(manager, b"newcomer", 1, wait=0.05)
        assert manager.get(busy.session_id) is busy
    asyncio.run(main())


def test_room_made_for_a_newcomer_goes_to_it_not_to_the_squatters_own_waiting_open():
    async def main():
        manager = sessions(client_cache_share=0.5)
        await open_as(manager, b"squatter", PAGES)
        queued = asyncio.ensure_future(open_as(manager, b"squatter", PAGES, wait=5))  # waits to take any room back
        await asyncio.sleep(0.01)
        assert manager.budget.waiting == 1
        newcomer = await open_as(manager, b"newcomer", 2)
        assert newcomer.session_id in {s.session_id for s in manager}
        assert manager.budget.used == 2 * PAGE_TOKENS and not queued.done()
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
    asyncio.run(main())
