"""zswarm-inspect: pure views and rendering on synthetic swarms, then the CLI against a live swarm of
tiny-Llama `zswarm-server` processes on loopback (a server killed -> a gap naming its blocks;
a replacement -> healthy again), and against a bootstrap address where nobody listens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dht import DHTNode, Identity
from zswarm.records import fetch_block_servers
from zswarm.swarm_info import ServerRecord, ServerState
from zswarm.inspect import Inspector, cli
from zswarm.inspect.fetch import check_blob, decode_value, expand_key, normalize_rpc_address, InspectError
from zswarm.inspect.render import render_route, render_swarm, short_id
from zswarm.inspect.views import (ROUTING_DEFAULTS, SwarmReport, assess_model, coverage_runs, plan_route,
                                  route_candidates, to_jsonable)

REPO = Path(__file__).resolve().parents[1]


def rec(peer, start, end, state=ServerState.ONLINE, throughput=10.0, rps=100.0, cache=1000, model="m"):
    return ServerRecord(peer_id=peer, address=f"tcp://127.0.0.1:{1000 + start}", model_id=model, start=start, end=end,
                        state=state, throughput=throughput, inference_rps=rps, cache_tokens_left=cache, version="0.1.0")


def blocks_of(num_blocks, *records):
    blocks = [{} for _ in range(num_blocks)]
    for r in records:
        for i in range(r.start, r.end):
            blocks[i][r.peer_id] = r
    return blocks


# ---- pure views ----------------------------------------------------------------------------------

def test_assess_model_names_uncovered_blocks_and_sums_throughput_per_block():
    blocks = blocks_of(8, rec("a", 0, 3, throughput=5), rec("b", 2, 4, throughput=7), rec("c", 6, 8))
    health = assess_model("m", 8, blocks)
    assert health.status == "broken" and health.gaps == [(4, 6)]
    assert [c.servers for c in health.blocks] == [1, 1, 2, 1, 0, 0, 1, 1]
    assert health.blocks[2].throughput == 12
    assert [s.peer_id for s in health.servers] == ["a", "b", "c"]
    assert coverage_runs(health.blocks) == [(0, 2, 1, 5.0), (2, 3, 2, 12.0), (3, 4, 1, 7.0), (4, 6, 0, 0.0),
                                            (6, 8, 1, 10.0)]


def test_joining_offline_and_unanswering_servers_do_not_cover_blocks():
    blocks = blocks_of(6, rec("a", 0, 2), rec("j", 2, 4, state=ServerState.JOINING),
                       rec("o", 4, 5, state=ServerState.OFFLINE), rec("dead", 5, 6))
    health = assess_model("m", 6, blocks, pings={"a": 0.001, "j": 0.001, "o": 0.001, "dead": None})
    assert health.gaps == [(2, 6)]
    assert health.blocks[2].joining == 1
    dead = next(s for s in health.servers if s.peer_id == "dead")
    assert dead.reachable is False and dead.rtt is None and dead.state == "online"


def test_a_moved_server_is_listed_once_with_its_live_record():
    old = rec("a", 0, 2, state=ServerState.OFFLINE)
    new = rec("a", 2, 4)
    health = assess_model("m", 4, blocks_of(4, old, new))
    assert len(health.servers) == 1 and (health.servers[0].start, health.servers[0].state) == (2, "online")
    assert health.gaps == [(0, 2)]


def test_swarm_text_shows_health_strip_and_server_rows_and_json_has_the_same_facts():
    blocks = blocks_of(30, rec("peer-a" * 6, 0, 10), rec("peer-c" * 6, 20, 30))
    view = SwarmReport(["127.0.0.1:1"], 0.0, [assess_model("m", 30, blocks, pings={"peer-a" * 6: 0.002})])
    text = render_swarm(view)
    assert "BROKEN: blocks 10:20 of m are served by no one" in text
    assert "1111111111..........1111111111" in text
    assert short_id("peer-a" * 6) in text and "2.0 ms" in text
    data = json.loads(json.dumps(to_jsonable(view)))
    model = data["models"][0]
    assert model["status"] == "broken" and model["gaps"] == [[10, 20]]
    assert model["gaps_text"] == "blocks 10:20 of m are served by no one"
    assert [s["peer_id"] for s in model["servers"]] == ["peer-a" * 6, "peer-c" * 6]


def test_hostile_record_and_info_strings_cannot_send_escape_sequences_to_the_terminal():
    from zswarm.inspect.render import render_server

    evil = rec("p" * 32, 0, 2)
    evil.version, evil.address = "\x1b[2J\x1b]0;owned\x07", "tcp://h:1\r\x1b[1A"
    text = render_swarm(SwarmReport(["x:1"], 0.0, [assess_model("m\x1b[31m", 2, blocks_of(2, evil))]))
    report = {"address": "tcp://h:1", "info": {"version": "\x1b[2J", 3: "\x07"}, "pings_sent": 1,
              "pings_answered": 0, "rtt_min": None, "rtt_median": None}
    for out in (text, render_server(report)):
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out


def test_route_view_takes_the_cheaper_replica_and_prices_it_like_the_router():
    from zswarm.routing import find_inference_route_with_cost

    blocks = blocks_of(4, rec("slow", 0, 4, rps=10.0), rec("fast1", 0, 2, rps=1000.0), rec("fast2", 2, 4, rps=1000.0))
    rtts = {"slow": 0.001, "fast1": 0.001, "fast2": 0.001}
    view = plan_route("m", 4, blocks, rtts)
    assert [(h.peer_id, h.start, h.end) for h in view.hops] == [("fast1", 0, 2), ("fast2", 2, 4)]
    _, cost = find_inference_route_with_cost(route_candidates(blocks, rtts, 0, 4), 0, 4, **ROUTING_DEFAULTS)
    assert view.seconds_per_token == pytest.approx(cost)
    assert "estimated" in render_route(view) and "fast1"[:12] in render_route(view)


def test_route_view_without_route_names_the_gap():
    view = plan_route("m", 4, blocks_of(4, rec("a", 0, 2), rec("b", 3, 4)), {})
    assert view.seconds_per_token is None and view.gaps == [(2, 3)]
    assert "blocks 2:3 of m are served by no one" in render_route(view)


def test_route_candidates_are_the_ones_the_client_sequence_manager_builds():
    """Inspect predicts the client's route; its candidates must be the client's own."""
    import asyncio

    from wire import MockTransport
    from zswarm.client import ClientConfig
    from zswarm.client.sequence_manager import SequenceManager

    blocks = blocks_of(6, rec("a", 0, 3, cache=10), rec("b", 2, 6), rec("j", 0, 6, state=ServerState.JOINING))
    blocks[3]["b"].next_pings = {"x": 0.5}
    config = ClientConfig()
    assert ROUTING_DEFAULTS == dict(hop_overhead=config.hop_overhead_s, no_cache_penalty=config.no_cache_penalty_s,
                                    unknown_rtt=config.unknown_rtt_s)

    async def fetch():
        return blocks

    manager = SequenceManager(config, model_id="m", num_blocks=6, transport=MockTransport(), fetch_records=fetch)
    asyncio.run(manager.update())
    manager.rtts = {"a": 0.01, "b": 0.02}
    for start, end, tokens in ((0, 6, 0), (1, 4, 100)):
        ours = route_candidates(blocks, manager.rtts, start, end, tokens_needed=tokens)
        assert ours == manager.candidates(start, end, tokens_needed=tokens)


def test_raw_entries_are_decoded_and_their_signatures_checked():
    from dht.entry import EntryVerifier, sign_entry
    from dht.server import key_digest

    identity = Identity.generate()
    record = rec(identity.peer_id, 0, 2)
    dkey = key_digest(expand_key("m/block/0"))
    now = time.time()
    verifier = EntryVerifier(max_ttl=3600, max_clock_skew=60, cache_size=0)
    good = check_blob(verifier, dkey, sign_entry(identity, dkey, record.to_bytes(), now + 60), now)
    assert (good.status, good.kind, good.peer_id) == ("valid", "server record", identity.peer_id)
    assert good.value["state"] == "ONLINE" and good.value["end"] == 2
    other_key = check_blob(verifier, key_digest("elsewhere"), sign_entry(identity, dkey, b"x", now + 60), now)
    assert other_key.status == "bad signature" and other_key.peer_id == identity.peer_id
    expired = check_blob(verifier, dkey, sign_entry(identity, dkey, b"x", now + 1, signed_at=now - 5), now + 2)
    assert expired.status == "expired"
    junk = check_blob(verifier, dkey, b"\xc1junk", now)
    assert junk.status.startswith("invalid") and junk.peer_id is None
    assert decode_value(b"\x00\x01")[1] in ("bytes", "msgpack")


def test_key_shorthands_and_addresses_are_expanded_or_refused():
    assert expand_key("models") == "zswarm/v1/models"
    assert expand_key("org/model/block/7") == "zswarm/v1/org/model/block/7"
    assert expand_key("zswarm/v1/x/block/1") == "zswarm/v1/x/block/1"
    assert normalize_rpc_address("127.0.0.1:5") == "tcp://127.0.0.1:5"
    with pytest.raises(InspectError):
        normalize_rpc_address("nonsense")


# ---- the CLI against live processes ---------------------------------------------------------------

def test_unreachable_bootstrap_gives_a_clear_message_and_exit_2():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a UDP port nobody answers on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "zswarm.inspect.cli", "--initial-peers", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert f"cannot reach the swarm: none of the initial DHT peers answered: 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


class TinySwarm:
    """A bootstrap DHT node here and tiny-Llama server processes that re-announce every second
    with records that expire after four (more than a period plus the 2 s ping of a dead next
    server that precedes each announcement), so a killed server's record is gone within seconds."""

    def __init__(self, model_dir: Path, workdir: Path):
        self.model_dir, self.workdir = model_dir, workdir
        self.model_id = model_dir.name
        self.bootstrap = DHTNode().start()
        self.procs: dict[str, tuple[subprocess.Popen, str, int, Path]] = {}

    def start(self, name: str, start: int, end: int) -> None:
        key = self.workdir / f"{name}.key"
        log = self.workdir / f"{name}.log"
        argv = [sys.executable, "-m", "zswarm.server.cli", str(self.model_dir), "--block-indices", f"{start}:{end}",
                "--initial-peers", self.bootstrap.address, "--identity", str(key), "--throughput", "100",
                "--device", "cpu", "--dtype", "float32", "--attn-cache-tokens", "1024", "--update-period", "1",
                "--expiration-periods", "4", "--drain-timeout", "0", "--public-name", f"node-{name}"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        with open(log, "wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.procs[name] = (popen, Identity.load_or_create(str(key)).peer_id, start, log)

    def wait_online(self, *names: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(names)
        while waiting:
            for name in waiting:
                popen, _, _, log = self.procs[name]
                assert popen.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
            blocks = fetch_block_servers(self.bootstrap, self.model_id, 0, 6)
            for name in list(waiting):
                _, peer_id, start, _ = self.procs[name]
                record = blocks[start].get(peer_id)
                if record is not None and record.state == ServerState.ONLINE:
                    waiting.discard(name)
            assert time.monotonic() < deadline, f"{waiting} not online after {timeout} s"
            time.sleep(0.3)

    def kill(self, name: str) -> None:
        popen = self.procs[name][0]
        popen.send_signal(signal.SIGKILL)
        popen.wait(timeout=10)

    def close(self) -> None:
        for popen, *_ in self.procs.values():
            if popen.poll() is None:
                popen.send_signal(signal.SIGKILL)
        for popen, *_ in self.procs.values():
            popen.wait(timeout=10)
        self.bootstrap.shutdown()


@pytest.fixture(scope="module")
def swarm(tiny_llama_dir, tmp_path_factory):
    swarm = TinySwarm(Path(tiny_llama_dir), tmp_path_factory.mktemp("inspect-swarm"))
    try:
        for name, (a, b) in {"a": (0, 2), "b": (2, 4), "c": (4, 6)}.items():
            swarm.start(name, a, b)
        swarm.wait_online("a", "b", "c")
        yield swarm
    finally:
        swarm.close()


@pytest.fixture(scope="module")
def inspector(swarm):
    """One inspector (one DHT node) for the views below, as `--watch` keeps one: every DHT node
    that joins and leaves stays a dead contact in others' tables for a while."""
    with Inspector([swarm.bootstrap.address], ping_timeout=1.0, info_timeout=1.0) as inspector:
        yield inspector


def inspect(capsys, inspector, *argv: str) -> tuple[int, str, str]:
    """`zswarm-inspect ARGV` through `inspector`: cli.main is parse_args + run + close."""
    code = cli.run(cli.parse_args(argv), inspector)
    out, err = capsys.readouterr()
    return code, out, err


def test_healthy_swarm_table_and_json_agree(swarm, inspector, capsys):
    code = cli.main(["--initial-peers", swarm.bootstrap.address])  # the whole command, once
    text = capsys.readouterr().out
    assert code == 0
    assert f"{swarm.model_id}  6 blocks, 3 servers  healthy" in text and "111111" in text
    code, out, _ = inspect(capsys, inspector, "--json")
    data = json.loads(out)
    (model,) = data["models"]
    assert code == 0 and model["status"] == "healthy" and model["gaps"] == []
    expected = sorted((peer_id, start) for _, peer_id, start, _ in swarm.procs.values())
    assert sorted((s["peer_id"], s["start"]) for s in model["servers"]) == expected
    table_rows = [line.split() for line in text.splitlines() if line.strip().startswith(tuple(
        s["peer_id"][:12] for s in model["servers"]))]
    # peer id, name, address, blocks, state, tokens/s, cache left, precision, adapters, version, uptime, rtt
    assert sorted((row[0], row[1], row[3], row[4], row[7], row[8]) for row in table_rows) == sorted(
        (s["peer_id"][:12], s["public_name"], f"{s['start']}:{s['end']}", s["state"], "float32", "-")
        for s in model["servers"])
    assert {s["public_name"] for s in model["servers"]} == {"node-a", "node-b", "node-c"}
    assert all(time.time() - 600 < s["started_at"] <= time.time() for s in model["servers"])
    assert all(row[10].endswith("s") for row in table_rows)  # uptime, in seconds or minutes and seconds
    assert all(s["rtt"] is not None and s["reachable"] for s in model["servers"])
    # --watch with --count: one JSON document per refresh, then exit
    code, out, _ = inspect(capsys, inspector, "--json", "--watch", "0.1", "--count", "2")
    assert code == 0 and [json.loads(line)["models"][0]["status"] for line in out.splitlines()] == ["healthy"] * 2


def test_server_route_and_raw_views_of_a_live_swarm(swarm, inspector, capsys):
    code, out, _ = inspect(capsys, inspector, "route", swarm.model_id)
    assert code == 0 and "over 3 hops" in out and "0:2" in out and "4:6" in out
    code, out, _ = inspect(capsys, inspector, "--json", "route", swarm.model_id)
    route = json.loads(out)
    assert [(h["start"], h["end"]) for h in route["hops"]] == [(0, 2), (2, 4), (4, 6)] and route["seconds_per_token"] > 0
    address = route["hops"][0]["address"]
    code, out, _ = inspect(capsys, inspector, "server", address)
    assert code == 0 and f"{swarm.model_id} blocks 0:2 of 6" in out and "3/3 answered" in out
    code, out, _ = inspect(capsys, inspector, "raw", f"{swarm.model_id}/block/3")
    peer_b = swarm.procs["b"][1]
    assert code == 0 and f"{peer_b}  valid  server record" in out and "expires in" in out
    code, _, err = inspect(capsys, inspector, "server", "127.0.0.1:9")  # nothing listens on the discard port
    assert code == 1 and "did not answer info" in err


def test_what_is_not_there_is_said_and_exits_1(swarm, inspector, capsys):
    code, out, err = inspect(capsys, inspector, "swarm", "--model", "foo/bar")
    assert code == 1 and out == "" and f"no server announces 'foo/bar' (models in this swarm: {swarm.model_id})" in err
    code, out, _ = inspect(capsys, inspector, "raw", "nosuch")
    assert code == 1 and "nosuch" in out and "no entries" in out
    for argv in (["--no-ping"], ["--no-ping", "swarm"], ["swarm", "--no-ping"]):  # accepted anywhere
        code, out, _ = inspect(capsys, inspector, "--json", *argv)
        assert code == 0 and all(s["rtt"] is None for s in json.loads(out)["models"][0]["servers"])
    assert cli.main(["route", "m"]) == 2  # a DHT view without --initial-peers: cannot ask
    assert "give --initial-peers" in capsys.readouterr().err


def test_serve_gives_the_health_page_and_its_json_over_http(swarm):
    """`zswarm-inspect serve`, the real command: the page and its JSON name all three servers with
    their spans and uptimes; a path it does not have is a 404, not a crash."""
    argv = [sys.executable, "-m", "zswarm.inspect.cli", "--initial-peers", swarm.bootstrap.address, "serve",
            "--port", "0", "--report-cache", "0"]
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        line = popen.stderr.readline()  # bounded by the process: it prints this line or exits
        assert "serving the health page at http://127.0.0.1:" in line, line + popen.stderr.read()
        url = line.rsplit(" ", 1)[1].strip()
        with urllib.request.urlopen(url + ".json", timeout=60) as reply:
            data = json.loads(reply.read())
        (model,) = data["models"]
        assert model["status"] == "healthy" and model["block_servers"] == [[swarm.procs[n][1]] for n in "aabbcc"]
        assert all(s["serving"] and 0 <= s["uptime_s"] < 600 for s in model["servers"])
        with urllib.request.urlopen(url, timeout=60) as reply:
            assert reply.headers["Content-Type"].startswith("text/html")
            page = reply.read().decode()
        assert f'data-model="{swarm.model_id}" data-status="healthy"' in page and "node-b" in page
        assert all(f'data-peer="{peer}" data-start="{start}"' in page for _, peer, start, _ in swarm.procs.values())
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url.replace("/health", "/nope"), timeout=60)
        assert missing.value.code == 404
        assert popen.poll() is None
    finally:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10)


def test_killed_server_shows_as_a_gap_naming_its_blocks_until_a_replacement_joins(swarm, inspector, capsys):
    swarm.kill("b")
    code, out, _ = inspect(capsys, inspector)
    assert code == 0 and f"BROKEN: blocks 2:4 of {swarm.model_id} are served by no one" in out
    assert "11..11" in out
    code, out, _ = inspect(capsys, inspector, "--json")
    assert json.loads(out)["models"][0]["gaps"] == [[2, 4]]
    code, out, _ = inspect(capsys, inspector, "route", swarm.model_id)
    assert code == 1 and f"blocks 2:4 of {swarm.model_id} are served by no one" in out

    swarm.start("b2", 2, 4)
    swarm.wait_online("b2")
    code, out, _ = inspect(capsys, inspector, "--json")
    model = json.loads(out)["models"][0]
    assert model["status"] == "healthy"
    assert swarm.procs["b2"][1] in {s["peer_id"] for s in model["servers"]}
