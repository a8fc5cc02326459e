"""A swarm spread over 3 processes on loopback: the zswarm-bootstrap node, an announcing server
process, and this test process reading through its own node."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dht import DHTConfig, DHTNode
from zswarm.records import announce_blocks, fetch_block_servers, list_models
from zswarm.swarm_info import ServerRecord

HERE = Path(__file__).parent


def _readline(proc, timeout=20.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line:
            return line.strip()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no output from {proc.args}; stderr: {proc.stderr.read()[-2000:]}")


@pytest.fixture
def processes():
    procs = []

    def spawn(*args):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        procs.append(p)
        return p

    try:
        yield spawn
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def test_swarm_over_three_processes_sees_each_others_records(processes):
    boot = processes("-m", "dht.bootstrap", "--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING")
    boot_address = _readline(boot)
    server = processes(str(HERE / "dht_announcer_process.py"), boot_address, "proc-model", "0", "6")
    ready, server_address, server_peer = _readline(server).split()
    assert ready == "READY"

    with DHTNode(initial_peers=[boot_address.replace("127.0.0.1", "localhost")], config=DHTConfig(rpc_timeout=0.3)) as me:
        mine = ServerRecord(peer_id=me.peer_id, address="tcp://127.0.0.1:10", model_id="proc-model", start=4, end=8)
        assert announce_blocks(me, mine, ttl=60, num_blocks=8)
        per_block = fetch_block_servers(me, "proc-model", 0, 8)
        assert [sorted(b) for b in per_block] == (
            [[server_peer]] * 4 + [sorted([server_peer, me.peer_id])] * 2 + [[me.peer_id]] * 2
        )
        assert per_block[0][server_peer].public_name == "proc"
        assert list_models(me) == {"proc-model": 8}

    boot.send_signal(subprocess.signal.SIGTERM)
    assert boot.wait(10) == 0
