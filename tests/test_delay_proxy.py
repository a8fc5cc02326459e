"""tools/benchlib/delay_proxy.py: a relay delays each round trip by its regions' distance, tells the
region of whoever connects from the process that owns the socket, and passes bytes unchanged;
tools/bench_wan.py answers --help."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

from benchlib.delay_proxy import Link, Pacer, ProxyConfig, pair_value  # noqa: E402
from benchlib.wan_swarm import free_port, near_servers, uniform  # noqa: E402

RTT_MS = 30


def _echo_tcp(sock):
    conn, _ = sock.accept()
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)


def _echo_udp(sock):
    while True:
        try:
            data, addr = sock.recvfrom(1 << 16)
        except OSError:
            return
        sock.sendto(data, addr)


def test_relay_delays_tcp_and_udp_round_trips_by_the_regions_distance_and_keeps_bytes(tmp_path):
    port = free_port("127.0.0.10")
    tcp = socket.create_server(("127.0.0.1", port))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    threading.Thread(target=_echo_tcp, args=(tcp,), daemon=True).start()
    threading.Thread(target=_echo_udp, args=(udp,), daemon=True).start()
    registry = tmp_path / "regions.json"
    registry.write_text(json.dumps({str(os.getpid()): "home"}))
    config = ProxyConfig([Link(f"127.0.0.10:{port}", f"127.0.0.1:{port}", "dc"),
                          Link(f"127.0.0.10:{port}", f"127.0.0.1:{port}", "dc", "udp")],
                         {"home": {"dc": RTT_MS}}, str(registry), str(tmp_path / "ready"))
    config.save(str(tmp_path / "proxy.json"))
    proxy = subprocess.Popen([sys.executable, str(TOOLS / "benchlib" / "delay_proxy.py"), str(tmp_path / "proxy.json")],
                             stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (tmp_path / "ready").exists() or proxy.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "ready").exists()
        payload = os.urandom(300_000)
        with socket.create_connection(("127.0.0.10", port), timeout=10) as conn:
            began = time.perf_counter()
            conn.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += conn.recv(1 << 20)
            took = time.perf_counter() - began
        assert got == payload
        assert took >= RTT_MS / 1000  # a lower bound: the relay never delivers early
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            began = time.perf_counter()
            client.sendto(b"datagram", ("127.0.0.10", port))
            assert client.recvfrom(100)[0] == b"datagram"
            assert time.perf_counter() - began >= RTT_MS / 1000
    finally:
        proxy.terminate()
        out, _ = proxy.communicate(timeout=20)
        tcp.close()
        udp.close()
    # the relay told our region (from this process's pid) and the service's apart
    assert json.loads(out.strip().splitlines()[-1])["connections"] == {"tcp home->dc": 1}


def test_matrix_is_read_either_way_and_bandwidth_queues_bytes_behind_each_other():
    assert pair_value({"a": {"b": 10}}, "b", "a", None) == 10
    assert pair_value({"a": {"b": 10}}, "a", "c", 0.0) == 0.0
    pacer = Pacer(0.05, 1000.0)  # 50 ms one way, 1000 bytes/s
    assert pacer.due(0.0, 500) == 0.55 and pacer.due(0.1, 500) == 1.05
    assert Pacer(0.05, None).due(1.0, 10**9) == 1.05


def test_scenarios_are_data_with_every_distance_written():
    near = near_servers(3, 100, 5)
    assert pair_value(near.rtt_ms, near.client, near.servers[0], None) == 100
    assert pair_value(near.rtt_ms, near.servers[0], near.servers[1], None) == 5
    flat = uniform(3, 100)
    regions = [flat.client, *flat.servers]
    assert all(pair_value(flat.rtt_ms, a, b, None) == 100 for a in regions for b in regions if a != b)


def test_bench_wan_help_names_scenarios_modes_and_json():
    out = subprocess.run([sys.executable, str(TOOLS / "bench_wan.py"), "--help"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for word in ("--scenarios", "--modes", "--json", "near-3", "uniform-3x100"):
        assert word in out
