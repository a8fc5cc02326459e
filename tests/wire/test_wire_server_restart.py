"""A client keeps working while its server process is killed and restarted on the same port."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wire import CurveKeys, RequestTimeout, ZmqTransport
from wire.endpoint import format_key

SERVER_SCRIPT = Path(__file__).with_name("echo_server_process.py")
REPO = Path(__file__).resolve().parents[2]  # the script imports this checkout's wire, not an installed one
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EchoServerProcess:
    def __init__(self, port: int, secret: bytes):
        self.proc = subprocess.Popen([sys.executable, str(SERVER_SCRIPT), str(port), format_key(secret)],
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                         [str(REPO), os.environ.get("PYTHONPATH", "")])})
        line = self.proc.stdout.readline()  # bounded: the process prints or dies
        if not line.startswith("ready"):
            self.kill()
            raise RuntimeError(f"echo server did not start: {line!r}")
        self.address = line.split()[1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture
def server_processes():
    started = []
    try:
        yield lambda port, secret: started.append(EchoServerProcess(port, secret)) or started[-1]
    finally:
        for server in started:
            server.kill()


def test_client_survives_server_kill_and_restart(server_processes):
    port, secret = free_port(), CurveKeys.generate().secret  # a persistent key, as a server's identity gives
    first = server_processes(port, secret)
    x = torch.randn(1, 4, 64).half()

    async def main():
        async with ZmqTransport() as transport:
            reply = await transport.call(first.address, "echo", {"n": 1}, [x], timeout=START_TIMEOUT)
            assert reply.meta["pid"] == first.proc.pid and torch.equal(reply.tensors[0], x)

            first.kill()
            with pytest.raises(RequestTimeout):
                await transport.call(first.address, "echo", {"n": 2}, [x], timeout=0.3)

            second = await asyncio.to_thread(server_processes, port, secret)
            assert second.address == first.address
            for attempt in range(60):  # reconnect backoff is at most 1 s
                try:
                    reply = await transport.call(second.address, "echo", {"n": 3}, [x], timeout=1.0)
                    break
                except RequestTimeout:
                    continue
            else:
                pytest.fail("client never reached the restarted server")
            assert reply.meta["pid"] == second.proc.pid != first.proc.pid
            assert torch.equal(reply.tensors[0], x)
            assert len(transport._connections) == 1  # the same DEALER, reconnected by libzmq

    asyncio.run(asyncio.wait_for(main(), 120))


def test_a_call_in_flight_fails_with_connection_lost_when_its_server_is_killed(server_processes):
    """kill -9 closes the server's sockets at once: the call fails then, as ConnectionLost (a
    RequestTimeout), not after its own 120 s timeout; so does a call sent after the kill."""
    from wire import ConnectionLost

    victim = server_processes(free_port(), CurveKeys.generate().secret)

    async def main():
        async with ZmqTransport() as transport:
            await transport.call(victim.address, "echo", {}, timeout=START_TIMEOUT)  # connected
            hanging = transport.start_call(victim.address, "hang", {}, timeout=120)
            await asyncio.sleep(0.2)
            assert not hanging.done()
            victim.kill()
            with pytest.raises(ConnectionLost, match="dropped"):
                await hanging
            with pytest.raises(ConnectionLost, match="refused"):  # nobody listens there any more
                await transport.call(victim.address, "echo", {}, timeout=120)

    asyncio.run(asyncio.wait_for(main(), 60))
