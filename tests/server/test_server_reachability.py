"""The reachability check (server/reachability.py), with real server processes and DHT nodes:

- on loopback the first server has nobody to ask and says so; the second is found reachable;
- the helper side connects back only to the asker's own IP, rate-limits, and finds a port where
  nothing listens unreachable;
- where this machine allows network namespaces and iptables (root): a server in a namespace whose
  firewall drops every inbound TCP connection is found not reachable, says what to do, and
  announces nothing, while the swarm outside goes on.
"""
import asyncio
import os
import shutil
import socket
import subprocess
import time

import pytest

from dht import DHTNode
from zswarm.errors import ClientLimitError
from zswarm.records import fetch_block_servers
from zswarm.server.reachability import ConnectBack

CPU = ("--device", "cpu", "--dtype", "float32", "--attn-cache-tokens", "512", "--throughput", "10")


def test_first_server_has_nobody_to_ask_and_the_second_is_found_reachable(spawn_server, tiny_model_dir):
    first = spawn_server(tiny_model_dir, "--new-swarm", *CPU, "--block-indices", "0:2").wait_ready(90)
    assert "reachability not checked: no other server in the swarm to ask yet" in first.log_text()
    second = spawn_server(tiny_model_dir, "--initial-peers", first.dht_address, *CPU,
                          "--block-indices", "2:4").wait_ready(90)
    port = second.address.split("#")[0].rsplit(":", 1)[1]
    dht_port = second.dht_address.rsplit(":", 1)[1]
    line = _reachability_line(second)
    assert f"reachable from the swarm: TCP 127.0.0.1:{port} (RPC) and UDP {dht_port} (DHT)" in line
    assert f"checked by {first.peer_id[:12]}" in line


def _reachability_line(server) -> str:
    return next(line for line in server.log_text().splitlines()
                if "zswarm.server.reachability" in line and "reachab" in line)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_back_only_to_the_asker_rate_limited_and_a_dead_port_is_unreachable(spawn_server, tiny_model_dir):
    target = spawn_server(tiny_model_dir, "--new-swarm", *CPU, "--block-indices", "0:2").wait_ready(90)
    node = DHTNode(initial_peers=[target.dht_address]).start()
    clock = [0.0]
    helper = ConnectBack(node, clock=lambda: clock[0])

    async def checks():
        # someone else's address: not probed, and the asker is told where it is seen from
        other = await helper.check({"rpc": target.address.replace("127.0.0.1", "10.9.9.9"),
                                    "dht": "10.9.9.9:4000"}, "127.0.0.1")
        assert other["rpc"] is None and "came from 127.0.0.1, not from 10.9.9.9" in other["why"]
        live = await helper.check({"rpc": target.address, "dht": target.dht_address}, "127.0.0.1")
        assert live["rpc"] is True and live["dht"] is True
        with pytest.raises(ClientLimitError):  # the same IP again at once
            await helper.check({"rpc": target.address, "dht": target.dht_address}, "127.0.0.1")
        clock[0] += 11.0
        dead = await helper.check({"rpc": f"tcp://127.0.0.1:{_free_port()}", "dht": f"127.0.0.1:{_free_port()}"},
                                  "127.0.0.1")
        assert dead["rpc"] is False and dead["dht"] is False and "no answer" in dead["rpc_error"]
    try:
        asyncio.run(checks())
    finally:
        node.shutdown()


# ---- behind a firewall, in a network namespace ----------------------------------------------------
def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("iptables") is None:
        return "needs root, ip and iptables (apt-get install iptables)"
    name = f"zsprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.decode().strip()}"
    try:
        rule = subprocess.run(["ip", "netns", "exec", name, "iptables", "-A", "INPUT", "-p", "tcp", "--syn",
                               "-j", "DROP"], capture_output=True)
        return None if rule.returncode == 0 else f"iptables in a namespace failed: {rule.stderr.decode().strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def firewalled_namespace():
    """A namespace joined to this one by a veth pair (outside 10.77.N.1, inside 10.77.N.2) whose
    firewall drops every inbound TCP connection; its own outbound connections work."""
    why = _can_make_namespaces()
    if why:
        pytest.skip(why)
    n = os.getpid() % 200 + 20
    ns, outside, inside = f"zsfw{os.getpid()}", f"zo{os.getpid()}", f"zi{os.getpid()}"
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", ns)
    try:
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", ns)
        run("ip", "addr", "add", f"10.77.{n}.1/24", "dev", outside)
        run("ip", "link", "set", outside, "up")
        run("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.77.{n}.2/24", "dev", inside)
        run("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
        run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        run("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP")
        yield ns, f"10.77.{n}.1", f"10.77.{n}.2"
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_server_behind_a_firewall_is_found_unreachable_and_announces_nothing(firewalled_namespace, tiny_model_dir,
                                                                               tmp_path):
    from zswarm.testing.launch import ServerProcess

    ns, outside_ip, inside_ip = firewalled_namespace
    env = dict(os.environ, HF_HUB_OFFLINE="1", ZSWARM_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    servers = []
    try:
        helper = ServerProcess([tiny_model_dir, "--new-swarm", "--host", outside_ip, *CPU, "--block-indices", "0:2"],
                               tmp_path / "helper.log", env=env)
        servers.append(helper)
        helper.wait_ready(90)
        hidden = ServerProcess([tiny_model_dir, "--initial-peers", helper.dht_address, "--host", inside_ip, *CPU,
                                "--block-indices", "2:4"], tmp_path / "hidden.log", env=env,
                               prefix=("ip", "netns", "exec", ns))
        servers.append(hidden)
        hidden.wait_ready(90)
        port = hidden.address.split("#")[0].rsplit(":", 1)[1]
        line = _reachability_line(hidden)
        assert f"TCP {port} not reachable from the swarm at {inside_ip}" in line
        assert "Open TCP" in line and "--public-host" in line and "Not announcing" in line
        assert f"checked by {helper.peer_id[:12]}" in line
        node = DHTNode(host=outside_ip, initial_peers=[helper.dht_address]).start()
        try:
            blocks = fetch_block_servers(node, os.path.basename(tiny_model_dir), 0, 4)
            assert helper.peer_id in blocks[0]  # the swarm outside is announced
            assert all(hidden.peer_id not in records for records in blocks)  # the unreachable server is not
        finally:
            node.shutdown()
        assert hidden.alive  # it waits to be reachable, it does not exit
    finally:
        for server in servers:
            server.stop()
