"""LoRA adapters (--adapters) served by real server processes on loopback, against peft itself.

Two servers host blocks 0:3 and 3:6 of the tiny Llama with the same two adapters. What they
compute with an adapter equals peft's PeftModel on the whole HF model (forward, the gradients a
backward returns, greedy generation through inference sessions, and the client's generate with
`active_adapter`); without one, the base model.
"""
import asyncio
import logging

import pytest
import torch

from zswarm.records import fetch_block_servers
from wire import ZmqTransport
from zswarm.errors import UnknownAdapterError
from zswarm.models import load_client_parts, load_span
from zswarm.models.lora import add_lora, using_adapter
from zswarm.models.lora_checkpoint import open_lora_adapter
from zswarm.models.testing import load_reference_model, load_reference_peft_model, make_tiny_lora_adapter

COMMON = ["--throughput", 100, "--no-rebalance", "--device", "cpu", "--attn-cache-tokens", 512,
          "--max-session-length", 64, "--update-period", 2, "--drain-timeout", 1]
TOL = 1e-5
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"style": make_tiny_lora_adapter(tiny_model_dir, root / "style", seed=1),
            "terse": make_tiny_lora_adapter(tiny_model_dir, root / "terse", seed=2, r=2, lora_alpha=4,
                                            target_modules=("k_proj", "o_proj", "up_proj"), use_rslora=True)}


@pytest.fixture(scope="module")
def swarm(tiny_model_dir, adapter_dirs, spawn_server):
    adapters = ["--adapters", adapter_dirs["style"], adapter_dirs["terse"]]
    first = spawn_server(tiny_model_dir, "--new-swarm", "--block-indices", "0:3", *adapters, *COMMON)
    # the second joins the swarm through the first once that one serves (its ready file says where)
    dht_address = first.wait_ready().dht_address
    second = spawn_server(tiny_model_dir, "--initial-peers", dht_address, "--block-indices", "3:6", *adapters,
                          *COMMON)
    return [first.wait_serving(), second.wait_serving()]


@pytest.fixture(scope="module")
def parts(tiny_source):
    return load_client_parts(tiny_source)


def run(coro, timeout=60):
    async def with_transport():
        transport = ZmqTransport()
        try:
            return await asyncio.wait_for(coro(transport), timeout)
        finally:
            await transport.close()
    return asyncio.run(with_transport())


def prompt_ids(seed, length=5):
    return torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(seed))


async def forward_chain(transport, servers, hidden, adapter):
    meta = {"adapter": adapter} if adapter else {}
    for server in servers:
        hidden = (await transport.call(server.address, "forward", {"start": server.start, "end": server.end, **meta},
                                       [hidden], timeout=20)).tensors[0]
    return hidden


async def greedy(transport, servers, parts, input_ids, adapter, new_tokens=NEW_TOKENS):
    """Our own greedy loop through inference sessions opened with `adapter`: prefill, then a token a step."""
    extra = {"adapter": adapter} if adapter else {}
    sessions = [(await transport.call(s.address, "open_session", {
        "start": s.start, "end": s.end, "max_length": 32, "batch_size": 1, **extra}, timeout=20)).meta["session_id"]
        for s in servers]
    ids, new, position = input_ids, input_ids, 0
    for _ in range(new_tokens):
        hidden = parts.embed(new)
        for server, session_id in zip(servers, sessions):
            hidden = (await transport.call(server.address, "inference_step",
                                           {"session_id": session_id, "position": position}, [hidden],
                                           timeout=20)).tensors[0]
        position += new.shape[1]
        new = parts.head(parts.norm(hidden[:, -1:])).argmax(-1)
        ids = torch.cat([ids, new], dim=1)
        await asyncio.sleep(0)  # let a concurrent generation's step in between ours
    for server, session_id in zip(servers, sessions):
        await transport.call(server.address, "close_session", {"session_id": session_id}, timeout=20)
    return ids


def hf_generate(model, input_ids):
    with torch.no_grad():
        return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=NEW_TOKENS,
                              do_sample=False, pad_token_id=0)


def test_info_and_dht_records_list_the_adapters(swarm, dht_client, tiny_model_id):
    infos = run(lambda t: asyncio.gather(*(t.call(s.address, "info", {}, timeout=20) for s in swarm)))
    assert [info.meta["adapters"] for info in infos] == [["style", "terse"]] * 2
    node = dht_client(swarm[0].dht_address)
    for per_block in fetch_block_servers(node, tiny_model_id, 0, 6):
        (record,) = per_block.values()
        assert record.adapters == ("style", "terse")


def test_forward_with_an_adapter_equals_peft_after_those_blocks(swarm, parts, tiny_model_dir, adapter_dirs):
    input_ids = torch.cat([prompt_ids(0, 7), prompt_ids(1, 7)])
    embedded = parts.embed(input_ids)
    for name in ("style", "terse"):
        reference = load_reference_peft_model(tiny_model_dir, adapter_dirs[name])
        with torch.no_grad():
            expected = reference(input_ids, output_hidden_states=True)
        after_first = run(lambda t: forward_chain(t, swarm[:1], embedded, name))
        assert (after_first - expected.hidden_states[3]).abs().max() <= TOL
        logits = parts.head(parts.norm(run(lambda t: forward_chain(t, swarm, embedded, name))))
        assert (logits - expected.logits).abs().max() <= TOL
    with torch.no_grad():
        base = load_reference_model(tiny_model_dir)(input_ids, output_hidden_states=True)
    plain = run(lambda t: forward_chain(t, swarm[:1], embedded, None))
    assert (plain - base.hidden_states[3]).abs().max() <= TOL
    assert (plain - after_first).abs().max() > 1e-2


def test_backward_with_an_adapter_returns_the_input_gradients_through_it(swarm, tiny_source, adapter_dirs):
    server = swarm[1]
    hidden = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(7))
    grad_out = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(8))

    def backward(adapter):
        meta = {"start": server.start, "end": server.end, **({"adapter": adapter} if adapter else {})}
        return run(lambda t: t.call(server.address, "backward", meta, [hidden, grad_out], timeout=20)).tensors[0]

    local = load_span(tiny_source, server.start, server.end)  # checked against peft in tests/models
    adapter = open_lora_adapter(str(adapter_dirs["style"]), tiny_source)
    add_lora(local, "style", adapter.load(local.start, local.end, dtype=torch.float32, device="cpu"))
    with using_adapter("style"):
        expected, _ = local.backward(hidden, grad_out)
    with_adapter = backward("style")
    assert (with_adapter - expected).abs().max() <= TOL
    assert torch.equal(backward(None), local.backward(hidden, grad_out)[0])
    assert (backward(None) - with_adapter).abs().max() > 1e-3


def test_greedy_generation_with_and_without_an_adapter_at_once_equals_peft_and_the_base(
        swarm, parts, tiny_model_dir, adapter_dirs):
    input_ids = prompt_ids(3)
    with_adapter, without = run(lambda t: asyncio.gather(
        greedy(t, swarm, parts, input_ids, "style"), greedy(t, swarm, parts, input_ids, None)))
    expected = hf_generate(load_reference_peft_model(tiny_model_dir, adapter_dirs["style"]), input_ids)
    assert with_adapter.tolist() == expected.tolist()
    assert without.tolist() == hf_generate(load_reference_model(tiny_model_dir), input_ids).tolist()
    assert with_adapter.tolist() != without.tolist()


@pytest.mark.parametrize("adapter", ["terse", None])
def test_the_client_with_active_adapter_generates_what_peft_generates(swarm, tiny_model_dir, adapter_dirs, adapter):
    from zswarm import AutoDistributedModelForCausalLM

    input_ids = prompt_ids(4)
    model = AutoDistributedModelForCausalLM.from_pretrained(tiny_model_dir, initial_peers=[swarm[0].dht_address],
                                                            active_adapter=adapter)
    try:
        out = model.generate(input_ids, max_new_tokens=NEW_TOKENS)
    finally:
        model.close()
    base = hf_generate(load_reference_model(tiny_model_dir), input_ids).tolist()
    if adapter is None:
        assert out.tolist() == base
    else:
        assert out.tolist() == hf_generate(load_reference_peft_model(tiny_model_dir, adapter_dirs[adapter]),
                                           input_ids).tolist()
        assert out.tolist() != base  # so the adapter was applied


def test_an_adapter_the_server_does_not_have_gets_unknown_adapter(swarm):
    server = swarm[0]
    hidden = torch.zeros(1, 2, 64)
    with pytest.raises(UnknownAdapterError, match="'nope' is not served here .served: style, terse"):
        run(lambda t: t.call(server.address, "open_session", {"max_length": 8, "adapter": "nope"}, timeout=20))
    with pytest.raises(UnknownAdapterError):
        run(lambda t: t.call(server.address, "forward", {"adapter": "nope"}, [hidden], timeout=20))
    assert run(lambda t: forward_chain(t, swarm[:1], hidden, "style")).shape == hidden.shape  # still serving


def _ia3(tmp_path, adapter_dirs):
    bad = tmp_path / "ia3"
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    (bad / "adapter_model.safetensors").write_bytes((adapter_dirs["style"] / "adapter_model.safetensors").read_bytes())
    return bad


@pytest.mark.parametrize("case, message", [
    ("not LoRA", r"cannot start: adapter .*ia3: peft_type is 'IA3'; zswarm servers serve LORA adapters only$"),
    ("missing", r"cannot start: adapter .*no-such-dir' is neither an existing directory nor a Hugging Face hub id$")])
def test_a_bad_adapter_stops_the_start_with_one_line_before_joining_the_swarm(
        tiny_model_dir, adapter_dirs, tmp_path, caplog, case, message):
    """In-process run_server: the CLI's path (it exits with what run_server returns); an exception
    escaping it would be the CLI's traceback and fail this test."""
    import re

    from zswarm.server.config import ServerConfig
    from zswarm.server.server import run_server

    caplog.set_level(logging.INFO)
    bad = _ia3(tmp_path, adapter_dirs) if case == "not LoRA" else tmp_path / "no-such-dir"
    config = ServerConfig(model=tiny_model_dir, new_swarm=True, block_indices=(0, 2), throughput=100.0, device="cpu",
                          adapters=(str(bad),))
    assert run_server(config) == 2
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert re.search(message, error.getMessage()) and error.exc_info is None, error.getMessage()
    assert not any("DHT node" in r.getMessage() for r in caplog.records)  # refused before joining


def test_a_server_that_moves_keeps_serving_its_adapters_on_the_new_blocks(tiny_model_dir, tiny_source, adapter_dirs):
    from zswarm.swarm_info import ServerState
    from zswarm.server.config import ServerConfig
    from zswarm.server.server import Server

    hidden = torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(10))
    local = load_span(tiny_source, 3, 6)
    adapter = open_lora_adapter(str(adapter_dirs["terse"]), tiny_source)
    add_lora(local, "terse", adapter.load(3, 6, dtype=torch.float32, device="cpu"))
    with using_adapter("terse"):
        expected = local.forward(hidden)

    async def main():
        server = Server(ServerConfig(model=tiny_model_dir, new_swarm=True, block_indices=(0, 3), throughput=100.0,
                                     device="cpu", adapters=(str(adapter_dirs["terse"]),), drain_timeout=1))
        running = asyncio.ensure_future(server.run())
        try:
            while not (server.announcer is not None and server.announcer.state == ServerState.ONLINE):
                assert not running.done(), running
                await asyncio.sleep(0.02)
            await server.move_to(3, 6)
            transport = ZmqTransport()
            try:
                reply = await transport.call(server.endpoint, "forward", {"adapter": "terse"}, [hidden], timeout=20)
            finally:
                await transport.close()
            return reply.tensors[0]
        finally:
            server.request_stop()
            assert await asyncio.wait_for(running, 30) == 0
    assert (asyncio.run(asyncio.wait_for(main(), 60)) - expected).abs().max() <= TOL


def test_adapter_names_must_be_distinct_and_fit_the_dht_record(adapter_dirs, tiny_source, tmp_path):
    import shutil

    from zswarm.models.errors import AdapterError
    from zswarm.server.adapters import open_adapters

    for parent in ("a", "b"):
        shutil.copytree(adapter_dirs["style"], tmp_path / parent / "style")
    with pytest.raises(AdapterError, match="two adapters are named 'style'"):
        open_adapters([str(tmp_path / "a" / "style"), str(tmp_path / "b" / "style")], tiny_source)
    many = []
    for i in range(17):  # 17 names of 120 characters: more than the record has room for
        many.append(tmp_path / "many" / f"{i:03d}".ljust(120, "x"))
        shutil.copytree(adapter_dirs["style"], many[-1])
    with pytest.raises(AdapterError, match="17 adapters with 2074 bytes of names do not fit"):
        open_adapters([str(d) for d in many], tiny_source)
    assert len(open_adapters([str(d) for d in many[:16]], tiny_source)) == 16


def test_the_command_line_takes_several_adapters():
    from zswarm.server.cli import parse_config

    config = parse_config(["some/model", "--adapters", "a", "org/b", "--new-swarm"])
    assert config.model == "some/model" and config.adapters == ("a", "org/b")
