"""CURVE on real processes: a server that does not hold the key its signed record announces is
refused and routed around, and plaintext servers are used only by a client that allows them.

Servers (all blocks 0:6 of the tiny llama): "honest" and "replica" with CURVE (the default),
"plain" with --insecure-plaintext. "honest" is killed with kill -9 (its record stays in the DHT
until it expires) and an impostor takes over its port with a key of its own.
"""
import pytest
import torch

from conftest import local_swarm
from wire import BackgroundLoop, CurveKeys, HandshakeFailed, PlaintextRefused, RpcServer, ZmqTransport
from wire.endpoint import endpoint, split_endpoint
from zswarm import AutoDistributedModelForCausalLM
from zswarm.records import fetch_block_servers

PROMPT = torch.tensor([[1, 5, 9, 33, 7, 2]])
CLIENT = dict(wire_dtype="float32", ping_timeout=2.0, max_retries=3, retry_backoff_s=0.1)


@pytest.fixture(scope="module")
def swarm(tiny_llama_dir, tmp_path_factory):
    with local_swarm(tiny_llama_dir, tmp_path_factory.mktemp("curve-swarm"), ("honest", 0, 6), ("replica", 0, 6),
                     ("plain", 0, 6, {"extra": ("--insecure-plaintext",)})) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def impostor(swarm):
    """kill -9 of "honest", then an RpcServer on its port with another key; yields (the stale
    record, the impostor's own address, the methods of every request that reached it)."""
    honest = swarm.servers["honest"]
    (servers,) = fetch_block_servers(swarm.bootstrap, swarm.model_id, 0, 1)
    stale = servers[honest.peer_id]
    swarm.kill(honest)
    seen = []

    async def answer(request):
        seen.append(request.method)
        return {}, []

    tcp_address, announced_key = split_endpoint(stale.endpoint)
    assert announced_key == stale.curve_key and len(announced_key) == 32
    loop = BackgroundLoop("impostor")
    methods = ("ping", "info", "open_session", "inference_step", "forward", "close_session")

    async def start():
        server = RpcServer({m: answer for m in methods}, port=int(tcp_address.rsplit(":", 1)[1]),
                           keys=CurveKeys.generate())
        await server.start()
        return server

    server = loop.run(start(), timeout=10)
    try:
        yield stale, server.address, seen
    finally:
        loop.run(server.stop(), timeout=10)
        loop.close()


def _call(address, *, insecure_plaintext=False):
    async def ping():
        async with ZmqTransport(insecure_plaintext=insecure_plaintext) as transport:
            return await transport.call(address, "ping", {}, timeout=10)
    loop = BackgroundLoop("probe")
    try:
        return loop.run(ping(), timeout=20)
    finally:
        loop.close()


def test_records_announce_each_servers_key_and_plaintext_servers_none(swarm):
    (servers,) = fetch_block_servers(swarm.bootstrap, swarm.model_id, 0, 1)
    keys = {name: servers[s.peer_id].curve_key for name, s in swarm.servers.items()}
    assert len(keys["honest"]) == len(keys["replica"]) == 32 and keys["honest"] != keys["replica"]
    assert keys["plain"] == b""
    assert swarm.servers["replica"].address == servers[swarm.servers["replica"].peer_id].endpoint


def test_a_server_without_the_announced_key_is_refused_and_reached_with_its_own(impostor):
    stale, impostor_address, seen = impostor
    with pytest.raises(HandshakeFailed, match="does not hold the CURVE key"):
        _call(stale.endpoint)
    assert seen == []  # the handshake failed before any request reached it
    assert split_endpoint(impostor_address)[0] == split_endpoint(stale.endpoint)[0]  # same host and port
    _call(impostor_address)  # it is alive there: only the key told the two apart
    assert seen == ["ping"]


def test_the_client_routes_around_the_impostor_and_generates_what_local_hf_does(swarm, impostor, tiny_llama_dir,
                                                                                 llama_reference):
    stale, _, seen = impostor
    before = list(seen)
    model = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_llama_dir), initial_peers=swarm.initial_peers,
                                                            **CLIENT)
    try:
        with model.inference_session(max_length=24) as session:
            out = model.generate(PROMPT, max_new_tokens=8, session=session)
            used = {s.peer_id for s in session.spans}
        bans = model.swarm.manager.bans
        assert bans.failures(stale.peer_id) >= 1  # it was tried, refused and banned
    finally:
        model.close()
    assert used == {swarm.servers["replica"].peer_id}  # never the impostor, never the plaintext server
    assert seen == before  # nothing of the session reached the impostor
    assert torch.equal(out, llama_reference.generate(PROMPT, max_new_tokens=8))


def test_plaintext_servers_serve_only_clients_that_allow_plaintext(swarm, tiny_llama_dir, llama_reference):
    plain = swarm.servers["plain"]
    assert "#curve=" not in plain.address
    with pytest.raises(PlaintextRefused):
        _call(plain.address)
    with pytest.raises(HandshakeFailed):  # a key named for it is no way in either
        _call(endpoint(plain.address, CurveKeys.generate().public))
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(tiny_llama_dir), initial_peers=swarm.initial_peers, insecure_plaintext=True,
        blocked_servers=(swarm.servers["replica"].peer_id, swarm.servers["honest"].peer_id), **CLIENT)
    try:
        with model.inference_session(max_length=24) as session:
            out = model.generate(PROMPT, max_new_tokens=8, session=session)
            assert {s.peer_id for s in session.spans} == {plain.peer_id}
    finally:
        model.close()
    assert torch.equal(out, llama_reference.generate(PROMPT, max_new_tokens=8))
