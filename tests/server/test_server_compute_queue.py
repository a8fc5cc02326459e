"""One compute thread: results and errors come back, inference goes first, the loop stays free."""
import asyncio
import threading

import pytest

from zswarm.server.compute import FORWARD, INFERENCE, ComputeClosed, ComputeQueue


def test_results_and_exceptions_come_back_to_the_caller():
    async def main():
        queue = ComputeQueue()
        try:
            assert await queue.run(lambda: 6 * 7) == 42
            with pytest.raises(ZeroDivisionError):
                await queue.run(lambda: 1 / 0)
        finally:
            queue.close()
    asyncio.run(main())


def test_waiting_inference_steps_run_before_waiting_forward_passes():
    async def main():
        queue = ComputeQueue()
        gate, order = threading.Event(), []
        blocker = asyncio.ensure_future(queue.run(lambda: gate.wait(5), FORWARD))
        await asyncio.sleep(0.05)  # the blocker is running; the rest queue up behind it
        jobs = [asyncio.ensure_future(queue.run(lambda n=n: order.append(n), prio))
                for n, prio in (("forward1", FORWARD), ("step1", INFERENCE), ("forward2", FORWARD),
                                ("step2", INFERENCE))]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(blocker, *jobs)
        queue.close()
        assert order == ["step1", "step2", "forward1", "forward2"]
    asyncio.run(main())


def test_event_loop_keeps_running_while_compute_is_busy():
    async def main():
        queue = ComputeQueue()
        gate = threading.Event()
        busy = asyncio.ensure_future(queue.run(lambda: gate.wait(5)))
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 5 and not busy.done()
        gate.set()
        await busy
        queue.close()
    asyncio.run(main())


def test_closed_queue_refuses_new_work():
    async def main():
        queue = ComputeQueue()
        queue.close()
        with pytest.raises(ComputeClosed):
            await queue.run(lambda: 1)
    asyncio.run(main())
