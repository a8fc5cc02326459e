"""The KV-cache budget: reserve, wait first-come-first-served, time out clearly, release."""
import asyncio

import pytest

from zswarm.server.cache_budget import BudgetTimeout, CacheBudget


def test_reserve_and_release_track_free_tokens():
    async def main():
        budget = CacheBudget(100)
        await budget.reserve(60, timeout=0)
        assert budget.free == 40
        budget.release(60)
        assert budget.free == 100
    asyncio.run(main())


def test_full_budget_times_out_with_what_was_asked_and_free():
    async def main():
        budget = CacheBudget(100)
        await budget.reserve(80, timeout=0)
        with pytest.raises(BudgetTimeout, match="asked for 30 tokens, 20 of 100 free"):
            await budget.reserve(30, timeout=0.05)
        assert budget.waiting == 0 and budget.free == 20
    asyncio.run(main())


def test_waiter_is_granted_when_room_is_released():
    async def main():
        budget = CacheBudget(100)
        await budget.reserve(80, timeout=0)
        waiter = asyncio.ensure_future(budget.reserve(50, timeout=5))
        await asyncio.sleep(0.01)
        assert not waiter.done() and budget.waiting == 1
        budget.release(80)
        await asyncio.wait_for(waiter, 1)
        assert budget.free == 50
    asyncio.run(main())


def test_waiters_are_served_in_arrival_order():
    async def main():
        budget = CacheBudget(100)
        await budget.reserve(100, timeout=0)
        order = []

        async def want(tokens, name):
            await budget.reserve(tokens, timeout=5)
            order.append(name)
        big = asyncio.ensure_future(want(90, "big"))
        await asyncio.sleep(0.01)
        small = asyncio.ensure_future(want(10, "small"))
        await asyncio.sleep(0.01)
        budget.release(100)
        await asyncio.wait_for(asyncio.gather(big, small), 1)
        assert order == ["big", "small"]
    asyncio.run(main())


def test_a_timed_out_head_lets_smaller_waiters_behind_it_in():
    async def main():
        budget = CacheBudget(100)
        await budget.reserve(50, timeout=0)
        head = asyncio.ensure_future(budget.reserve(80, timeout=0.05))
        await asyncio.sleep(0.01)
        behind = asyncio.ensure_future(budget.reserve(30, timeout=5))
        with pytest.raises(BudgetTimeout):
            await head
        await asyncio.wait_for(behind, 1)
        assert budget.free == 20
    asyncio.run(main())


def test_a_request_larger_than_the_whole_budget_is_refused_at_once():
    async def main():
        with pytest.raises(ValueError, match="exceed the whole cache budget"):
            await CacheBudget(100).reserve(101, timeout=10)
    asyncio.run(main())
