"""A server pushes a step only to servers announced for its model in the DHT (push_targets.py):
real server processes; a hop naming any other endpoint is refused before the step runs, and
nothing dials it; a hop to an announced server is pushed, and that server hands the output over."""
import asyncio
import socket

import pytest
import torch

from wire import ZmqTransport
from zswarm.errors import BadInputError

CPU = ("--device", "cpu", "--dtype", "float32", "--attn-cache-tokens", "512", "--throughput", "10")


def test_steps_are_pushed_only_to_announced_servers(spawn_server, tiny_model_dir):
    first = spawn_server(tiny_model_dir, "--new-swarm", *CPU, "--block-indices", "0:2").wait_ready(90)
    second = spawn_server(tiny_model_dir, "--initial-peers", first.dht_address, *CPU,
                          "--block-indices", "2:4").wait_ready(90)
    stranger = socket.socket()  # an endpoint no server announces: it must never be dialled
    stranger.bind(("127.0.0.1", 0))
    stranger.listen(4)
    stranger.settimeout(1.0)
    hidden = torch.randn(1, 3, 64)
    opening = {"start": 2, "end": 4, "max_length": 16, "batch_size": 1}

    async def run():
        async with ZmqTransport() as transport:
            sid = (await transport.call(first.address, "open_session",
                                        {"start": 0, "end": 2, "max_length": 16, "batch_size": 1},
                                        timeout=30)).meta["session_id"]
            # with a well-formed CURVE key, so that only the allow-list stands between it and a dial
            key = first.address.split("#", 1)[1]
            hop = {"address": f"tcp://127.0.0.1:{stranger.getsockname()[1]}#{key}", "session_id": "a" * 16,
                   "open": opening}
            with pytest.raises(BadInputError, match="will not push to tcp://127.0.0.1"):
                await transport.call(first.address, "inference_step", {
                    "session_id": sid, "position": 0, "tensor_names": ["hidden"], "push": [hop]}, [hidden], timeout=30)
            hop = {"address": second.address, "session_id": "b" * 16, "open": opening}
            out = (await transport.call(first.address, "inference_step", {
                "session_id": sid, "position": 0, "tensor_names": ["hidden"], "push": [hop]}, [hidden], timeout=30)).tensors[0]
            pushed = (await transport.call(second.address, "step_result", {
                "session_id": "b" * 16, "position": 0, "wait_timeout": 30}, timeout=40)).tensors[0]
            return out, pushed

    try:
        out, pushed = asyncio.run(run())
        assert out.shape == pushed.shape == (1, 3, 64) and not torch.equal(out, pushed)  # blocks 0:2, then 2:4
        with pytest.raises(socket.timeout):
            stranger.accept()
    finally:
        stranger.close()
