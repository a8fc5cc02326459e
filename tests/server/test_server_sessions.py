"""Sessions: server-made ids, budget reservation, idle expiry, clear unknown/expired errors."""
import asyncio

import pytest

from zswarm.errors import CacheFullError, ShuttingDownError, TooManyTokensError, UnknownSessionError
from zswarm.models.kv_pool import PAGE_TOKENS
from zswarm.server.cache_budget import CacheBudget
from zswarm.server.sessions import ServerSessions


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def open_args(**kw):
    return dict(dict(start=0, end=2, max_length=PAGE_TOKENS, batch_size=2, wait_timeout=0, span=None), **kw)


def test_open_reserves_batch_times_max_length_and_close_gives_it_back():
    async def main():
        manager = ServerSessions(CacheBudget(10 * PAGE_TOKENS), idle_timeout=60)
        a = await manager.open(**open_args())
        b = await manager.open(**open_args())
        assert a.session_id != b.session_id and len(a.session_id) == 32
        assert manager.budget.free == 6 * PAGE_TOKENS
        assert manager.close(a.session_id)
        assert manager.budget.free == 8 * PAGE_TOKENS and len(manager) == 1
    asyncio.run(main())


def test_a_session_reserves_whole_pages_of_the_kv_pool_per_row():
    async def main():
        manager = ServerSessions(CacheBudget(10 * PAGE_TOKENS), idle_timeout=60)
        await manager.open(**open_args(max_length=PAGE_TOKENS + 1, batch_size=3))
        assert manager.budget.free == 4 * PAGE_TOKENS  # 3 rows x 2 pages
    asyncio.run(main())


def test_open_beyond_budget_fails_with_cache_full_or_too_many_tokens():
    async def main():
        manager = ServerSessions(CacheBudget(3 * PAGE_TOKENS), idle_timeout=60)
        await manager.open(**open_args())
        with pytest.raises(CacheFullError, match="cache full"):
            await manager.open(**open_args(wait_timeout=0.02))
        with pytest.raises(TooManyTokensError, match="whole cache budget"):
            await manager.open(**open_args(max_length=100))
    asyncio.run(main())


def test_idle_sessions_expire_and_then_say_so():
    async def main():
        clock = Clock()
        manager = ServerSessions(CacheBudget(10 * PAGE_TOKENS), idle_timeout=10, clock=clock)
        idle = await manager.open(**open_args())
        busy = await manager.open(**open_args())
        clock.now = 8
        manager.get(busy.session_id)  # use refreshes it
        clock.now = 15
        assert manager.expire_idle() == [idle.session_id]
        with pytest.raises(UnknownSessionError, match="expired after 10s idle"):
            manager.get(idle.session_id)
        with pytest.raises(UnknownSessionError, match="unknown to this server"):
            manager.get("feedface")
        assert manager.budget.free == 8 * PAGE_TOKENS
    asyncio.run(main())


def test_a_session_whose_step_is_running_never_expires():
    async def main():
        clock = Clock()
        manager = ServerSessions(CacheBudget(10 * PAGE_TOKENS), idle_timeout=1, clock=clock)
        session = await manager.open(**open_args())
        async with session.lock:
            clock.now = 100
            assert manager.expire_idle() == []
        assert manager.expire_idle() == [session.session_id]
    asyncio.run(main())


def test_no_new_sessions_while_not_accepting():
    async def main():
        manager = ServerSessions(CacheBudget(10 * PAGE_TOKENS), idle_timeout=60)
        manager.stop_accepting("moving blocks")
        with pytest.raises(ShuttingDownError, match="moving blocks"):
            await manager.open(**open_args())
    asyncio.run(main())
